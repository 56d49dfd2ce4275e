"""service/file_commands.py against hostile use: `xraysr shrink` and `xraysr upscale` never write over an input,
refuse name clashes and output names they cannot honour, carry on past unreadable files, and take seeds as the
API does. The real CLI (``main``) on real files, with the shipped default model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.service.dicom_files import dicom_file
from tests.service.serving import DEFAULT_ENGINES
from xraysr.service.cli import main

MODEL = ["--engines-dir", str(DEFAULT_ENGINES), "--model", "cxr-default", "--threads", "1"]


def _png(size: int) -> bytes:
    ramp = np.rint(np.add.outer(np.arange(size), np.arange(size)) * (255 / (2 * size - 2))).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    return buffer.getvalue()


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


@pytest.mark.parametrize("command", ["shrink", "upscale"])
def test_output_into_the_input_folder_is_refused_and_the_originals_stay(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    size = 1024 if command == "shrink" else 64
    folder = _folder(tmp_path / "in", {"a.png": _png(size), "b.png": _png(size)})
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    extra = MODEL if command == "upscale" else []
    assert main([command, str(folder), "-o", str(folder), *extra]) == 2
    assert "would write over the input" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_a_single_file_onto_itself_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original = tmp_path / "x.png"
    original.write_bytes(_png(64))
    assert main(["upscale", str(original), "-o", str(original), *MODEL]) == 2
    assert "would write over the input" in capsys.readouterr().err
    assert original.read_bytes() == _png(64)


def test_an_output_folder_inside_the_input_folder_is_fine_when_names_cannot_collide(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "in", {"a.png": _png(1024)})
    assert main(["shrink", str(folder), "-o", str(folder / "small")]) == 0
    assert Image.open(folder / "small" / "a.png").size == (64, 64)
    assert Image.open(folder / "a.png").size == (1024, 1024)


def test_shrink_refuses_two_inputs_that_would_make_one_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pixels = np.asarray(Image.open(io.BytesIO(_png(512))))
    folder = _folder(tmp_path / "in", {"big.png": _png(1024), "big.dcm": dicom_file(pixels)})
    assert main(["shrink", str(folder), "-o", str(tmp_path / "out")]) == 2
    assert "would all be written to big.png" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_shrink_carries_on_past_an_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _folder(tmp_path / "in", {"a.png": _png(1024), "c.png": _png(512)})
    # Reading /proc/self/mem from offset 0 fails with EIO, even as root (where chmod 000 would not stop a read).
    (folder / "b.png").symlink_to("/proc/self/mem")
    assert main(["shrink", str(folder), "-o", str(tmp_path / "out")]) == 1
    assert "b.png" in capsys.readouterr().err
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]


@pytest.mark.parametrize(
    ("command", "output", "expected"),
    [("shrink", "x.dcm", "writes .png files"), ("upscale", "x.jpg", "writes .png or .dcm files")],
)
def test_an_output_name_the_command_cannot_honour_is_refused(
    tmp_path: Path, command: str, output: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.png"
    source.write_bytes(_png(1024 if command == "shrink" else 64))
    extra = MODEL if command == "upscale" else []
    assert main([command, str(source), "-o", str(tmp_path / output), *extra]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / output).exists()


@pytest.mark.parametrize("seed", ["-1", "2147483648", "abc"])
def test_a_seed_out_of_the_apis_range_is_refused_not_wrapped(
    tmp_path: Path, seed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.png"
    source.write_bytes(_png(64))
    with pytest.raises(SystemExit) as exited:
        main(["upscale", str(source), "-o", str(tmp_path / "out.png"), "--seed", seed, *MODEL])
    assert exited.value.code == 2
    assert "--seed" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("command", ["shrink", "upscale"])
def test_an_empty_file_is_reported_as_a_file(tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "empty.png"
    source.write_bytes(b"")
    extra = MODEL if command == "upscale" else []
    assert main([command, str(source), "-o", str(tmp_path / "out.png"), *extra]) == 1
    error = capsys.readouterr().err
    assert "the file is empty (0 bytes)" in error and "request body" not in error
