"""service/commands.py: `xraysr upscale` on a file and a folder, and `xraysr serve` refusing bad settings."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.service.dicom_files import dicom_file
from xraysr.service.cli import main
from xraysr.service.engine import load_pipeline
from xraysr.service.settings import Settings
from xraysr.service.uncertainty import uncertainty_levels

REPO = Path(__file__).resolve().parents[2]


def _model_flags(settings: Settings) -> list[str]:
    return ["--engines-dir", str(settings.engines_dir), "--model", settings.model, "--threads", "1"]


def _folder_of(paths: list[Path], folder: Path) -> Path:
    folder.mkdir()
    for path in paths:
        shutil.copy(path, folder / path.name)
    return folder


def test_upscale_one_file_matches_the_pipeline(
    engine_settings: Settings, lr_png_paths: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out" / "sr.png"
    argv = ["upscale", str(lr_png_paths[0]), "-o", str(output), "--steps", "2", "--seed", "3"]
    assert main(argv + _model_flags(engine_settings)) == 0
    image = Image.open(output)
    assert (image.size, image.mode) == ((256, 256), "L")
    assert "not for diagnosis" in image.text["Disclaimer"] and image.text["xraysr-seed"] == "3"
    assert str(output) in capsys.readouterr().out
    lr = np.asarray(Image.open(lr_png_paths[0]))
    expected = load_pipeline(engine_settings, warm_up=False).upscale(lr, steps=2, seed=3).image
    np.testing.assert_array_equal(np.asarray(image), expected)


def test_upscale_a_folder_carries_on_past_a_bad_file_and_fails_at_the_end(
    engine_settings: Settings, lr_png_paths: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = _folder_of(lr_png_paths[:2], tmp_path / "in")
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((96, 128), np.uint8)).save(buffer, format="PNG")
    (inputs / "a_wrong_size.png").write_bytes(buffer.getvalue())
    absurd = dicom_file(np.zeros((64, 64), np.uint16), bits_stored=16, RescaleIntercept=1e300)
    (inputs / "b_absurd.dcm").write_bytes(absurd)  # a ZeroDivisionError traceback once aborted the folder here
    (inputs / "notes.txt").write_text("not an input")
    argv = ["upscale", str(inputs), "-o", str(tmp_path / "out"), "--steps", "2"]
    assert main(argv + _model_flags(engine_settings)) == 1
    written = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert written == sorted(path.name for path in lr_png_paths[:2])
    captured = capsys.readouterr()
    assert f"xraysr upscale: error: {inputs / 'a_wrong_size.png'}: expected a 64x64 image, got 128x96" in captured.err
    assert f"xraysr upscale: error: {inputs / 'b_absurd.dcm'}: invalid DICOM RescaleIntercept" in captured.err
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert "Traceback" not in captured.err and len(errors) == 2  # one line per bad file (the rest is tqdm's bar)
    assert "upscaled 2 of 4 files" in captured.out


def test_upscale_refuses_steps_outside_the_manifest_range(
    engine_settings: Settings, lr_png_paths: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["upscale", str(lr_png_paths[0]), "-o", str(tmp_path / "sr.png"), "--steps", "99"]
    assert main(argv + _model_flags(engine_settings)) == 2
    assert capsys.readouterr().err == "xraysr upscale: error: --steps must be between 2 and 50, got 99\n"


def test_upscale_with_samples_writes_their_mean_and_uncertainty_map(
    engine_settings: Settings, lr_png_paths: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output, spread = tmp_path / "sr.png", tmp_path / "maps" / "spread.png"
    argv = ["upscale", str(lr_png_paths[0]), "-o", str(output), "--steps", "2", "--seed", "3", "--samples", "3"]
    assert main([*argv, "--uncertainty", str(spread), *_model_flags(engine_settings)]) == 0
    lr = np.asarray(Image.open(lr_png_paths[0]))
    expected = load_pipeline(engine_settings, warm_up=False).upscale(lr, steps=2, seed=3, samples=3)
    assert expected.uncertainty is not None
    np.testing.assert_array_equal(np.asarray(Image.open(output)), expected.image)
    np.testing.assert_array_equal(np.asarray(Image.open(spread)), uncertainty_levels(expected.uncertainty))
    out = capsys.readouterr().out
    assert f"{output} (2 DDIM steps, mean of 3 samples, seeds 3 to 5, spread of the samples " in out


def test_upscale_a_folder_with_samples(
    engine_settings: Settings, lr_png_paths: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = _folder_of(lr_png_paths[:2], tmp_path / "in")
    argv = ["upscale", str(inputs), "-o", str(tmp_path / "out"), "--steps", "2", "--samples", "2"]
    assert main(argv + _model_flags(engine_settings)) == 0
    pipeline = load_pipeline(engine_settings, warm_up=False)
    for path in lr_png_paths[:2]:
        expected = pipeline.upscale(np.asarray(Image.open(path)), steps=2, seed=0, samples=2).image
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / path.name)), expected)
    assert "upscaled 2 of 2 files" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--samples", "9"], "--samples must be between 1 and 8, got 9"),
        (["--samples", "0"], "--samples must be between 1 and 8, got 0"),
        (["--uncertainty", "{tmp}/u.png"], "--uncertainty: tiny-test has no calibrated interval, and one sample has no spread: give --samples 2 or more"),  # noqa: E501
    ],
)
def test_upscale_refuses_samples_it_cannot_run(
    engine_settings: Settings,
    lr_png_paths: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    argv = ["upscale", str(lr_png_paths[0]), "-o", str(tmp_path / "sr.png")]
    argv += [flag.format(tmp=tmp_path) for flag in flags]
    assert main(argv + _model_flags(engine_settings)) == 2
    assert capsys.readouterr().err == f"xraysr upscale: error: {message}\n"
    assert not (tmp_path / "sr.png").exists()


def test_uncertainty_for_a_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["upscale", str(tmp_path), "-o", str(tmp_path / "out"), "--samples", "2", "--uncertainty", "u.png"]
    assert main(argv) == 2
    assert "--uncertainty writes one map: give one input file, not a folder" in capsys.readouterr().err


def test_serve_with_a_bad_setting_exits_with_one_clear_line(tiny_engine_dir: Path) -> None:
    env = {**os.environ, "XRAYSR_ENGINES_DIR": str(tiny_engine_dir.parent), "XRAYSR_MODEL": tiny_engine_dir.name}
    result = subprocess.run(
        [sys.executable, "-m", "xraysr.service.cli", "serve", "--port", "70000"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "xraysr serve: error: port: Input should be less than or equal to 65535 (got 70000)\n"
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "nope"], "model folder {engines}/nope does not exist"),
        (["--precision", "int8"], "model folder {engines}/{model} has no manifest.int8.json for --precision int8"),
        (["--precision", "fp16"], "fp16 needs the tensorrt backend (TensorRT builds FP16 engines from the FP32 ONNX)"),
        (["--max-body-bytes", "10"], "max_body_bytes: Input should be greater than or equal to 1024"),
    ],
)
def test_serve_refuses_before_starting_the_server(
    tiny_engine_dir: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    argv = ["serve", "--engines-dir", str(tiny_engine_dir.parent), "--model", tiny_engine_dir.name, *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("xraysr serve: error: ") and err.count("\n") == 1
    assert message.format(engines=tiny_engine_dir.parent, model=tiny_engine_dir.name) in err


def test_the_printed_line_gives_the_interval_the_map_holds(
    lr_png_paths: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import xraysr

    engines = Path(__file__).resolve().parents[2] / "engines"
    output, interval = tmp_path / "sr.png", tmp_path / "interval.png"
    argv = ["upscale", str(lr_png_paths[0]), "-o", str(output), "--uncertainty", str(interval)]
    assert main([*argv, "--engines-dir", str(engines), "--precision", "fp32"]) == 0
    expected = xraysr.load(engines_dir=engines, precision="fp32").upscale(lr_png_paths[0])
    assert expected.uncertainty is not None and expected.coverage == 0.9
    mean = float(expected.uncertainty.mean())
    assert f", interval ± {mean:.2f} grey levels at 90%, LR consistency " in capsys.readouterr().out
