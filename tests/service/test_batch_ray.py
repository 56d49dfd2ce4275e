"""`xraysr upscale IN.npz -o OUT.npz --ray` (service/batch/ray_adapter.py) on a real local Ray instance, which
the command starts and stops: two actors, the same bytes as the run in this process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.service.serving import DEFAULT_ENGINES
from xraysr.service.cli import main

ray = pytest.importorskip("ray", reason="Ray is the optional extra: pip install 'xraysr[ray]'")

# Ray Data warns about its own settings when it copies its context.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

MODEL = ["--engines-dir", str(DEFAULT_ENGINES), "--model", "cxr-default", "--precision", "fp32"]


def test_ray_gives_the_local_runs_bytes(tmp_path: Path) -> None:
    shifts = iter(range(0, 200, 7))
    ramp = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    arrays = {
        "train_images": np.stack([ramp + next(shifts) for _ in range(5)]),
        "train_labels": np.arange(5 * 14).reshape(5, 14).astype(np.uint8),
        "test_images": np.stack([ramp.T + next(shifts) for _ in range(2)]),
    }
    np.savez_compressed(tmp_path / "in.npz", **arrays)  # type: ignore[arg-type]
    # The loop (seeded per image) and the maps: the options where a difference could hide.
    options = ["--shard-size", "2", "--samples", "2", "--steps", "10", "--seed", "5", "--uncertainty", *MODEL]
    local, on_ray = tmp_path / "local.npz", tmp_path / "ray.npz"
    assert main(["upscale", str(tmp_path / "in.npz"), "-o", str(local), *options]) == 0
    assert not ray.is_initialized()
    assert main(["upscale", str(tmp_path / "in.npz"), "-o", str(on_ray), "--ray", "--workers", "2", *options]) == 0
    assert not ray.is_initialized()  # the instance the command started is stopped
    assert on_ray.read_bytes() == local.read_bytes()
    assert not (tmp_path / "ray.npz.parts").exists()
