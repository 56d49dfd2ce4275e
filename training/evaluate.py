"""`xraysr evaluate`: the model, the VAE's reconstruction ceiling and bicubic, against HR on one split.

Every score is on the 8-bit 256×256 image against the 8-bit HR (training.metrics), so the numbers compare
with ../shared/data/cxr/README.md's bicubic baseline and with the service's outputs.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from xraysr.training.config import Degradation
from xraysr.training.data import PairDataset, to_uint8, to_unit_range
from xraysr.training.degradation import make_lr
from xraysr.training.metrics import bicubic_upscale, psnr, ssim
from xraysr.training.pipeline import TorchPipeline
from xraysr.training.visualize import COLUMNS, comparison_grid

logger = logging.getLogger(__name__)

METHODS = ("bicubic", "vae_ceiling", "model")
PERCEPTUAL_NOTICE = (
    "perceptual metrics skipped: no LPIPS/DISTS weights on this machine, and xraysr never downloads weights"
)


def _summary(scores: dict[str, list[float]]) -> dict[str, float]:
    values = np.array(scores, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size < values.size:
        # A lossless reconstruction has infinite PSNR; it is reported as such, not averaged in.
        return {"mean": float("inf"), "std": 0.0, "lossless": int(values.size - finite.size)}
    return {"mean": float(values.mean()), "std": float(values.std())}


def evaluate(
    checkpoint: Path,
    split: str,
    out_dir: Path,
    steps: int = 25,
    sampler: str = "ddim",
    seed: int = 0,
    data_root: Path | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    grid_rows: int = 4,
    grid_files: list[str] | None = None,
    degradation: Degradation = "cubic",
) -> dict:
    """Writes report.json, report.md and grid.png to ``out_dir``; returns the report.

    ``degradation`` makes each LR from its HR (training/degradation.py); "cubic" is the stored LR_64.

    ``grid_files`` picks the grid's rows by filename (e.g. images whose licence allows showing them);
    otherwise the first ``grid_rows`` images are shown.
    """
    started = time.monotonic()
    pipeline = TorchPipeline.from_checkpoint(checkpoint, data_root)
    dataset = PairDataset(pipeline.config.data, split)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    generator = torch.Generator().manual_seed(seed)
    per_image: list[dict] = []
    grid: list[list[np.ndarray]] = []
    for start in range(0, count, batch_size):
        indices = range(start, min(start + batch_size, count))
        lr, hr = dataset.pairs(torch.tensor(indices))
        if degradation != "cubic":
            lr = to_unit_range(
                torch.stack(
                    [
                        torch.from_numpy(make_lr(image[0].numpy(), lr.shape[-1], degradation))[None]
                        for image in to_uint8(hr)
                    ]
                )
            )
        sr = pipeline(lr, steps, generator, sampler)
        ceiling = pipeline.vae.decode(pipeline.vae.encode(hr)).clamp(-1, 1)
        for index, lr_u8, hr_u8, sr_u8, ceiling_u8 in zip(
            indices, to_uint8(lr), to_uint8(hr), to_uint8(sr), to_uint8(ceiling), strict=True
        ):
            lr_image, hr_image = lr_u8[0].numpy(), hr_u8[0].numpy()
            outputs = {
                "bicubic": bicubic_upscale(lr_image, hr_image.shape[0]),
                "vae_ceiling": ceiling_u8[0].numpy(),
                "model": sr_u8[0].numpy(),
            }
            record = {"filename": dataset.filenames[index]}
            for method, image in outputs.items():
                record[f"psnr_{method}"] = psnr(image, hr_image)
                record[f"ssim_{method}"] = ssim(image, hr_image)
            per_image.append(record)
            wanted = dataset.filenames[index] in grid_files if grid_files else len(grid) < grid_rows
            if wanted:
                grid.append([lr_image, outputs["bicubic"], outputs["model"], hr_image])
    if not grid:
        raise ValueError(f"none of the grid files {grid_files} is in the {split} split")
    summary = {
        method: {metric: _summary([r[f"{metric}_{method}"] for r in per_image]) for metric in ("psnr", "ssim")}
        for method in METHODS
    }
    report = {
        "summary": summary,
        "settings": {
            "checkpoint": str(checkpoint),
            "training_step": pipeline.step,
            "split": split,
            "degradation": degradation,
            "images": count,
            "steps": steps,
            "sampler": sampler,
            "eta": pipeline.config.diffusion.eta,
            "seed": seed,
            "batch_size": batch_size,
            "data_root": str(pipeline.config.data.root),
        },
        "perceptual": PERCEPTUAL_NOTICE,
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "wall_seconds": round(time.monotonic() - started, 1),
        "per_image": per_image,
    }
    logger.info(PERCEPTUAL_NOTICE)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(markdown_table(report))
    Image.fromarray(comparison_grid(grid)).save(out_dir / "grid.png")
    return report


def markdown_table(report: dict) -> str:
    settings = report["settings"]
    lines = [
        f"{settings['split']} split, {settings['images']} images, LR by {settings.get('degradation', 'cubic')}; "
        f"{settings['sampler']} {settings['steps']} steps, "
        f"eta {settings['eta']}, seed {settings['seed']}. PSNR in dB and SSIM on 8-bit 256×256 against HR "
        "(mean ± std over images).",
        "",
        "| method | PSNR (dB) | SSIM |",
        "|---|---|---|",
    ]
    names = {
        "bicubic": "bicubic (cv2.INTER_CUBIC)",
        "vae_ceiling": "VAE ceiling: decode(encode(HR))",
        "model": "xraysr (latent diffusion)",
    }
    for method in METHODS:
        scores = report["summary"][method]
        cells = []
        for metric, digits in (("psnr", 2), ("ssim", 4)):
            score = scores[metric]
            cells.append(
                "∞ (lossless on 8-bit)"
                if np.isinf(score["mean"])
                else f"{score['mean']:.{digits}f} ± {score['std']:.{digits}f}"
            )
        lines.append(f"| {names[method]} | {cells[0]} | {cells[1]} |")
    lines += ["", f"Grid columns: {' | '.join(COLUMNS)}.", ""]
    return "\n".join(lines)
