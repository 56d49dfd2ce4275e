"""`xraysr upscale IN.npz -o OUT.npz` (service/batch/) on real files with the shipped model: a MedMNIST-style
archive round-trips, each image equals the Python API's and the server's answer for the same options, a run
killed with SIGKILL resumes to the same bytes without redoing its finished shards, a bad image is reported by
index while the rest go on, and arrays the model cannot take are refused before any work."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import xraysr
from tests.service.serving import DEFAULT_ENGINES
from xraysr.service.batch.shards import ShardWorker, image_seed
from xraysr.service.cli import main
from xraysr.service.python_api import Upscaler
from xraysr.service.tools.local_server import local_server

MODEL = ["--engines-dir", str(DEFAULT_ENGINES), "--model", "cxr-default", "--precision", "fp32", "--threads", "1"]
REPOSITORY = Path(__file__).resolve().parents[2]


def _xray(shift: int) -> np.ndarray:
    ramp = np.add.outer(np.arange(64), np.arange(64)) * 2 + shift
    texture = 15 * np.sin(np.arange(64)[:, None] / (2.0 + shift / 10)) * np.cos(np.arange(64)[None, :] / 4.0)
    return np.clip(np.rint(ramp + texture), 0, 255).astype(np.uint8)


def _chestmnist(path: Path, counts: dict[str, int]) -> dict[str, np.ndarray]:
    """What MedMNIST+'s chestmnist_64.npz holds, in small: <split>_images (N, 64, 64) uint8, <split>_labels (N, 14)."""
    arrays: dict[str, np.ndarray] = {}
    shift = 0
    for split, count in counts.items():
        arrays[f"{split}_images"] = np.stack([_xray(shift := shift + 3) for _ in range(count)])
        arrays[f"{split}_labels"] = (np.arange(count * 14).reshape(count, 14) % 3 == 0).astype(np.uint8)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
    return arrays


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as loaded:
        return {key: loaded[key] for key in loaded.files}


@pytest.fixture(scope="module")
def upscaler() -> Upscaler:
    return xraysr.load(engines_dir=DEFAULT_ENGINES, precision="fp32")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray], Path]:
    """A small ChestMNIST-style archive and its uninterrupted output: 5 + 1 + 3 images, shards of 2."""
    folder = tmp_path_factory.mktemp("archive")
    source = folder / "chestmnist_64.npz"
    arrays = _chestmnist(source, {"train": 5, "val": 1, "test": 3})
    output = folder / "reference.npz"
    assert main(["upscale", str(source), "-o", str(output), "--shard-size", "2", *MODEL]) == 0
    return source, arrays, output


def test_a_chestmnist_archive_round_trips(
    archive: tuple[Path, dict[str, np.ndarray], Path], upscaler: Upscaler
) -> None:
    _, arrays, output = archive
    answered = _arrays(output)
    assert list(answered) == list(arrays)  # same keys, same order
    for key, array in arrays.items():
        if key.endswith("_labels"):
            assert answered[key].dtype == array.dtype
            np.testing.assert_array_equal(answered[key], array)
            continue
        assert (answered[key].shape, answered[key].dtype) == ((len(array), 256, 256), np.uint8)
        for lr, sr in zip(array, answered[key], strict=True):  # the default answer: the one-pass estimate
            np.testing.assert_array_equal(sr, upscaler.upscale(lr).image)
    assert not output.with_name(output.name + ".parts").exists()


def test_two_worker_processes_give_the_same_bytes(archive: tuple[Path, dict[str, np.ndarray], Path]) -> None:
    source, _, reference = archive
    output = reference.with_name("two_workers.npz")
    assert main(["upscale", str(source), "-o", str(output), "--shard-size", "2", "--workers", "2", *MODEL]) == 0
    assert output.read_bytes() == reference.read_bytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    with local_server(DEFAULT_ENGINES, "cxr-default", precision="fp32", log=log) as url:
        yield url


@pytest.mark.parametrize(
    "options",
    [
        {"samples": 2, "steps": 10, "seed": 7},  # the loop: each image from image_seed(7, key, index)
        {"consistency": "enforce"},  # the estimate, projected onto its input
    ],
    ids=["loop", "enforce"],
)
def test_each_image_is_the_python_apis_and_the_servers_answer(
    tmp_path: Path, upscaler: Upscaler, server: str, options: dict
) -> None:
    images = np.stack([_xray(4), _xray(11)])
    np.savez(tmp_path / "in.npz", test_images=images)
    flags = [item for name, value in options.items() for item in (f"--{name}", str(value))]
    assert main(["upscale", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz"), "--uncertainty", *flags,
                 *MODEL]) == 0  # fmt: skip
    answered = _arrays(tmp_path / "out.npz")
    for index, lr in enumerate(images):
        seed = image_seed(options.get("seed", 0), "test_images", index)
        query = {**options, "seed": seed}
        response = httpx.post(
            f"{server}/upscale", params=query, content=_png(lr), headers={"accept": "application/json"}, timeout=120
        ).json()
        served = _pixels(base64.b64decode(response["image_png_base64"]))
        np.testing.assert_array_equal(answered["test_images"][index], served)
        served_map = _pixels(base64.b64decode(response["uncertainty_png_base64"]))
        np.testing.assert_array_equal(answered["test_images_uncertainty"][index], served_map)
        if "samples" in options:
            alone = upscaler.upscale(lr, samples=2, steps=10, seed=seed)
            np.testing.assert_array_equal(answered["test_images"][index], alone.image)


def test_a_bad_image_is_reported_by_index_and_the_rest_go_on(
    tmp_path: Path,
    archive: tuple[Path, dict[str, np.ndarray], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source, _, reference = archive
    output = tmp_path / "out.npz"
    bad = _arrays(source)["train_images"][3]
    upscale_batch = Upscaler.upscale_batch

    def failing(self: Upscaler, images: list[np.ndarray], **options: object) -> list:
        if any(np.array_equal(image, bad) for image in images):
            raise RuntimeError("the runtime could not run this one")
        return upscale_batch(self, images, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(Upscaler, "upscale_batch", failing)
    command = ["upscale", str(source), "-o", str(output), "--shard-size", "2", *MODEL]
    assert main(command) == 1
    err = capsys.readouterr().err
    assert "xraysr upscale: error: train_images image 3: RuntimeError: the runtime could not run this one" in err
    answered, expected = _arrays(output), _arrays(reference)
    np.testing.assert_array_equal(answered["train_images_failed"], [3])
    assert not answered["train_images"][3].any()
    np.testing.assert_array_equal(np.delete(answered["train_images"], 3, 0), np.delete(expected["train_images"], 3, 0))
    np.testing.assert_array_equal(answered["test_images"], expected["test_images"])
    assert (tmp_path / "out.npz.parts").is_dir()  # kept, so that --resume retries the shard with the failure

    assert main([*command, "--resume", "--seed", "3"]) == 2  # another run's options: refused
    assert "was started with another options" in capsys.readouterr().err
    monkeypatch.setattr(Upscaler, "upscale_batch", upscale_batch)
    assert main([*command, "--resume"]) == 0
    assert output.read_bytes() == reference.read_bytes()
    assert not (tmp_path / "out.npz.parts").exists()


def test_a_killed_run_resumes_without_redoing_finished_shards(
    tmp_path: Path, upscaler: Upscaler, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, output, parts = tmp_path / "in.npz", tmp_path / "out.npz", tmp_path / "out.npz.parts"
    _chestmnist(source, {"train": 24})
    command = ["upscale", str(source), "-o", str(output), "--shard-size", "2", *MODEL]
    process = subprocess.Popen(
        [sys.executable, "-m", "xraysr.service.cli", *command],
        cwd=REPOSITORY,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(parts.glob("shard-*.npz")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = sorted(path.name for path in parts.glob("shard-*.npz"))
    assert 1 <= len(finished) < 12, finished
    assert not output.exists()  # no half-written output

    ran: list[int] = []
    call = ShardWorker.__call__

    def counting(self: ShardWorker, shard: object) -> object:
        ran.append(shard.index)  # type: ignore[attr-defined]
        return call(self, shard)  # type: ignore[arg-type]

    monkeypatch.setattr(ShardWorker, "__call__", counting)
    assert main([*command, "--resume"]) == 0
    assert sorted(ran) == [index for index in range(12) if f"shard-{index:06d}.npz" not in finished]
    uninterrupted = tmp_path / "uninterrupted.npz"
    assert main(["upscale", str(source), "-o", str(uninterrupted), "--shard-size", "2", *MODEL]) == 0
    assert output.read_bytes() == uninterrupted.read_bytes()
    assert not parts.exists()


def test_a_npy_round_trips_with_its_maps_beside_it(tmp_path: Path, upscaler: Upscaler) -> None:
    images = np.stack([_xray(2), _xray(6)]).astype(np.uint16) * 257  # 16-bit, mapped as a 16-bit PNG is
    np.save(tmp_path / "in.npy", images)
    maps = tmp_path / "maps.npy"
    assert main(["upscale", str(tmp_path / "in.npy"), "-o", str(tmp_path / "out.npy"), "--uncertainty", str(maps),
                 *MODEL]) == 0  # fmt: skip
    answered = np.load(tmp_path / "out.npy")
    assert answered.shape == np.load(maps).shape == (2, 256, 256)
    for lr, sr in zip(images, answered, strict=True):
        np.testing.assert_array_equal(sr, upscaler.upscale(lr).image)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"train_images": np.zeros((2, 64, 64), np.float32)}, "train_images (2, 64, 64) is float32; image arrays must"),
        ({"train_images": np.zeros((2, 128, 128), np.uint8)}, "holds no (N, 64, 64) or (64, 64) image array"),
        ({"x": np.zeros((1, 64, 64), np.uint8), "x_uncertainty": np.zeros(1)}, "already holds x_uncertainty"),
    ],
    ids=["float", "wrong-size", "key-clash"],
)
def test_arrays_the_model_cannot_take_are_refused_before_any_work(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    np.savez(tmp_path / "in.npz", **arrays)  # type: ignore[arg-type]
    output = tmp_path / "out.npz"
    assert main(["upscale", str(tmp_path / "in.npz"), "-o", str(output), "--uncertainty", *MODEL]) == 2
    assert message in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.npz"]


def test_ray_without_ray_installed_says_what_to_install_in_one_line(
    archive: tuple[Path, dict[str, np.ndarray], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the extra looks like to an import
    assert main(["upscale", str(archive[0]), "-o", str(tmp_path / "out.npz"), "--ray", *MODEL]) == 2
    err = capsys.readouterr().err
    assert err == (
        "xraysr upscale: error: this command needs ray to run on Ray (--ray), which is not installed: "
        "pip install 'xraysr[ray]'\n"
    )


def test_array_flags_are_refused_for_image_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.png").write_bytes(_png(_xray(0)))
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--workers", "2"]) == 2
    assert "--workers: for .npz/.npy arrays only" in capsys.readouterr().err
