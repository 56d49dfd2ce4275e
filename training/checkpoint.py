"""What both training loops share: EMA weights, the learning-rate shape, per-step seeds, checkpoint files."""

from __future__ import annotations

import copy
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

_CHECKPOINT_NAME = re.compile(r"^step_(\d{7})\.pt$")


class EMA:
    """Exponential moving average of a model's weights, kept as a full model so it can sample and export.

    The decay ramps up as ``(1 + step) / (10 + step)`` so early, poor weights are forgotten quickly.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema_tensor, tensor in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if ema_tensor.dtype.is_floating_point:
                ema_tensor.lerp_(tensor.detach(), 1.0 - decay)
            else:
                ema_tensor.copy_(tensor)


def warmup_cosine(step: int, warmup_steps: int, max_steps: int, floor: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``floor``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A seed that depends only on (run seed, step, stream): the randomness of step k never depends on
    history, which is what makes a resumed run bit-identical to an uninterrupted one."""
    return (seed * 1_000_003 + step * 7_919 + stream * 104_729) % (2**63 - 1)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:07d}.pt"


def latest_checkpoint(run_dir: Path) -> Path | None:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return None
    candidates = sorted(path for path in folder.iterdir() if _CHECKPOINT_NAME.match(path.name))
    return candidates[-1] if candidates else None


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Writes atomically: an interrupted save never leaves a truncated file that resume would pick up."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)
    logger.info("saved checkpoint %s", path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)
