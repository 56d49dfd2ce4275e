"""The suite's own model: a tiny SR model trained for 2 steps on the suite's X-rays (tests/xrays.py) and exported
as the real thing, so that the service's tests need neither torch nor ../shared.

Its images are meaningless, but every ONNX file, interface, checksum and manifest field is what `xraysr export`
writes. Two exports of the same weights live in tests/data/models/: ``tiny`` (encoder, unet, decoder: the model a
host-loop runtime needs, and what older exports look like) and ``tiny-step`` (with export's default unet_step
graph, UNet + DDIM update). Each is a folder ``engine`` in its own engines directory, as the tests name it.

Remake them after a change to the export or the manifest (tests/training/test_tiny_model.py says when):

    python -m tests.tiny_model
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

MODELS = Path(__file__).resolve().parent / "data" / "models"
ENGINE = "engine"
EXPORTS = {"tiny": False, "tiny-step": True}  # engines directory → with the unet_step graph
STEPS = (2, 4, 50)


def checked_in(kind: str) -> Path:
    """The checked-in model folder of ``kind`` ("tiny" or "tiny-step")."""
    return MODELS / kind / ENGINE


def train_tiny(work: Path, data_root: Path) -> Path:
    """Trains the tiny model for 2 steps on ``data_root`` (a prepared-data folder) and returns its checkpoint."""
    import torch

    from xraysr.training.config import SRTrainConfig
    from xraysr.training.train import train_sr
    from xraysr.training.vae import CxrVAE

    torch.manual_seed(0)
    torch.save(CxrVAE(hidden_channels=8, num_res_blocks=1).state_dict(), work / "vae.pt")
    config = SRTrainConfig.model_validate(
        {
            "run_name": "tiny",
            "output_dir": str(work / "runs"),
            "data": {"root": str(data_root)},
            "vae": {"kind": "cxr", "hidden_channels": 8, "num_res_blocks": 1, "checkpoint": str(work / "vae.pt")},
            "unet": {"base_channels": 8, "channel_multipliers": [1, 2], "time_embed_dim": 16},
            "diffusion": {"prediction_type": "v_prediction", "sampling_steps": 2},
            "optim": {"batch_size": 2, "max_steps": 2, "warmup_steps": 1},
            "schedule": {"validation_images": 1},
        }
    )
    return train_sr(config, resume=None)


def export_tiny(checkpoint: Path, out: Path, step_graph: bool) -> Path:
    from xraysr.training.export import export_model

    export_model(checkpoint, out, "tiny", version="tiny-test", steps=STEPS, step_graph=step_graph)
    return out


def build(root: Path, data_root: Path) -> dict[str, Path]:
    """Trains once and exports both kinds under ``root``/<kind>/engine; returns each model folder by kind, and
    the checkpoint they were exported from as "checkpoint"."""
    checkpoint = train_tiny(root, data_root)
    made = {kind: export_tiny(checkpoint, root / kind / ENGINE, step) for kind, step in EXPORTS.items()}
    return {**made, "checkpoint": checkpoint}


def main() -> None:
    from tests import xrays
    from tests.conftest import build_cxr_root

    with tempfile.TemporaryDirectory() as scratch:
        data_root = build_cxr_root(Path(scratch) / "data", ["train"] * 4 + ["val"] * 2 + ["test"] * 2)
        assert len(xrays.pair_names()) >= 8
        made = build(Path(scratch), data_root)
        for kind in EXPORTS:
            folder = made[kind]
            shutil.rmtree(checked_in(kind), ignore_errors=True)
            shutil.copytree(folder, checked_in(kind))
            print(f"wrote {checked_in(kind)}: {sum(f.stat().st_size for f in folder.iterdir()) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
