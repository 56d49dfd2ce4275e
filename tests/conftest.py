"""Fixtures shared by the whole suite: where the real shared data lives, and small data roots built on it."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def build_cxr_root(root: Path, splits: list[str]) -> Path:
    """A prepared-data folder whose images are links to the first len(splits) shared CXR pairs."""
    cxr = SHARED_DATA / "cxr"
    if not (cxr / "HR_256").is_dir():
        pytest.skip(f"shared CXR development set not found at {cxr}")
    names = sorted(path.name for path in (cxr / "HR_256").glob("*.png"))[: len(splits)]
    for folder in ("HR_256", "LR_64"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / folder / name).symlink_to(cxr / folder / name)
    with (root / "splits.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "patient_id", "view", "split"])
        for index, (name, split) in enumerate(zip(names, splits, strict=False)):
            writer.writerow([name, f"patient{index}", "PA", split])
    return root


@pytest.fixture(scope="session")
def tiny_cxr_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 train, 2 val, 2 test pairs of real chest X-rays."""
    return build_cxr_root(tmp_path_factory.mktemp("tiny_cxr"), ["train"] * 4 + ["val"] * 2 + ["test"] * 2)


@pytest.fixture(scope="session")
def tiny_engine_dir(tiny_cxr_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real engines/<model> folder exported from a tiny SR model trained for 2 steps on real X-rays.

    Its images are meaningless, but every ONNX file, checksum and manifest field is the real thing.
    """
    torch = pytest.importorskip("torch", reason="exporting a model needs the train extra")
    from xraysr.training.config import SRTrainConfig
    from xraysr.training.export import export_model
    from xraysr.training.train import train_sr
    from xraysr.training.vae import CxrVAE

    work = tmp_path_factory.mktemp("tiny_engine")
    torch.save(CxrVAE(hidden_channels=8, num_res_blocks=1).state_dict(), work / "vae.pt")
    config = SRTrainConfig.model_validate(
        {
            "run_name": "tiny",
            "output_dir": str(work / "runs"),
            "data": {"root": str(tiny_cxr_root)},
            "vae": {"kind": "cxr", "hidden_channels": 8, "num_res_blocks": 1, "checkpoint": str(work / "vae.pt")},
            "unet": {"base_channels": 8, "channel_multipliers": [1, 2], "time_embed_dim": 16},
            "diffusion": {"prediction_type": "v_prediction", "sampling_steps": 2},
            "optim": {"batch_size": 2, "max_steps": 2, "warmup_steps": 1},
            "schedule": {"validation_images": 1},
        }
    )
    checkpoint = train_sr(config, resume=None)
    # Without the step graph: the model a host-loop runtime needs, and what older exports look like.
    export_model(checkpoint, work / "engine", "tiny", version="tiny-test", steps=(2, 4, 50), step_graph=False)
    return work / "engine"


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_engine_dir: Path) -> Path:
    return tiny_engine_dir.parent / "runs" / "tiny" / "checkpoints" / "step_0000002.pt"


@pytest.fixture(scope="session")
def tiny_step_engine_dir(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model exported again with export's defaults, which add the unet_step component (UNet + DDIM update)."""
    from xraysr.training.export import export_model

    engine = tmp_path_factory.mktemp("tiny_step_engine") / "engine"
    export_model(tiny_checkpoint, engine, "tiny", version="tiny-test", steps=(2, 4, 50))
    return engine
