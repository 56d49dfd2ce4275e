"""What a half-precision time embedding would cost: the reason TensorRT builds pin it to FP32 (issue 9).

The UNet's sinusoidal embedding multiplies the timestep (up to 999) by frequencies up to 1, so its angles reach
~999 rad, where float16's spacing is 0.5 rad: a builder free to run that Mul in FP16 feeds cos/sin angles off by
up to 0.25 rad. This script measures (1) the embedding's error at every timestep of the served 25-step schedule
and (2) what it does to images: the checkpoint's UNet in FP32 run with an embedding whose angles are rounded to
float16 (everything else FP32, so only the embedding's error shows), on validation images, against HR and against
the FP32 output. It runs on a CUDA GPU when there is one (then also the whole UNet in FP16 with and without the
FP32 embedding), otherwise on the CPU.

    python docs/scripts/fp16_time_embedding.py --checkpoint runs/sr_all_6k/checkpoints/step_0006000.pt \
        --data runs/data/all --limit 16
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from xraysr.service.manifest import load_manifest
from xraysr.service.sampler import DDIMSampler
from xraysr.service.settings import PACKAGED_ENGINES_DIR
from xraysr.training import unet_lite
from xraysr.training.data import read_splits
from xraysr.training.metrics import psnr
from xraysr.training.pipeline import TorchPipeline

Embedding = Callable[[Tensor, int, float], Tensor]


def embedding_with_half_angles(timesteps: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """unet_lite.timestep_embedding with its angles rounded to float16, as an FP16 Mul would leave them."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=timesteps.device) / half)
    angles = (timesteps.half()[:, None] * frequencies.half()[None, :]).float()
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(embedding, (0, dim % 2))


def run(pipeline: TorchPipeline, lr: list[np.ndarray], embedding: Embedding, dtype: torch.dtype, device: str) -> list:
    unet_lite.timestep_embedding = embedding  # UNetLite.forward looks it up in its module at call time
    pipeline.unet.to(device=device, dtype=dtype)
    outputs = []
    for index, image in enumerate(lr):
        x = torch.from_numpy(image).float().div(127.5).sub(1.0)[None, None].to(device)
        generator = torch.Generator(device=device).manual_seed(index)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=dtype == torch.float16):
            sr = pipeline(x, steps=25, generator=generator)
        outputs.append(((sr.float()[0, 0].cpu().numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8))
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=16)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    exact: Embedding = unet_lite.timestep_embedding

    sampler = load_manifest(PACKAGED_ENGINES_DIR / "cxr-default").sampler
    schedule = torch.tensor(DDIMSampler(sampler).set_timesteps(sampler.default_steps), dtype=torch.float32)
    error = (embedding_with_half_angles(schedule, 64) - exact(schedule, 64)).abs().amax(dim=1)
    print(f"device {device}; served schedule {schedule[0]:.0f}…{schedule[-1]:.0f} ({len(schedule)} steps)")
    print(
        f"embedding max |error| with float16 angles: t={schedule[0]:.0f}: {error[0]:.3f}, "
        f"worst over the schedule: {error.max():.3f} (values lie in [-1, 1])"
    )

    pipeline = TorchPipeline.from_checkpoint(args.checkpoint, data_root=args.data)
    rows = [row for row in read_splits(args.data) if row.split == "val"][: args.limit]
    lr = [np.array(Image.open(args.data / "LR_64" / row.filename)) for row in rows]
    hr = [np.array(Image.open(args.data / "HR_256" / row.filename)) for row in rows]
    variants = {
        "fp32": (exact, torch.float32),
        "fp32 UNet, float16 angles": (embedding_with_half_angles, torch.float32),
    }
    if device == "cuda":
        variants["fp16 UNet (autocast), fp32 embedding"] = (exact, torch.float16)
        variants["fp16 UNet (autocast), float16 angles"] = (embedding_with_half_angles, torch.float16)
    results = {name: run(pipeline, lr, embedding, dtype, device) for name, (embedding, dtype) in variants.items()}
    print(f"\n{len(rows)} validation images, 25 steps, seed = image index")
    print("| variant | PSNR vs HR | PSNR vs the fp32 output |\n|---|---|---|")
    for name, images in results.items():
        vs_hr = np.mean([psnr(image, target) for image, target in zip(images, hr, strict=True)])
        vs_fp32 = np.mean([psnr(image, ref) for image, ref in zip(images, results["fp32"], strict=True)])
        print(f"| {name} | {vs_hr:.2f} dB | {'identical' if name == 'fp32' else f'{vs_fp32:.2f} dB'} |")


if __name__ == "__main__":
    main()
