"""`xraysr evaluate-served`: the shipped engines, through a real `xraysr serve`, against HR and the baselines.

Each LR image of a split is made from its HR by the chosen degradation (``cubic`` is the stored LR_64, the
primary protocol), POSTed to /upscale as a PNG exactly as a user would send it, and the PNG that comes back
is scored (training/scoring.py) per source group: adults first, pediatric beside.

``shift=True`` is the proxy for a hospital nobody trained on: each HR first goes through `SHIFT`, the
acquisition steps of training/acquisition.py at strengths beyond the ranges any config trains on (each step
with probability 1/2, drawn per image from the seed), and is scored against that film.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from xraysr.service.imaging import encode_png
from xraysr.service.tools.local_server import local_server
from xraysr.service.uncertainty import UNCERTAINTY_SCALE
from xraysr.training.acquisition import apply_acquisition, draw_acquisition
from xraysr.training.config import AcquisitionConfig, Degradation, Range
from xraysr.training.data import read_splits
from xraysr.training.degradation import make_lr
from xraysr.training.scoring import markdown_summary, score_image, summarize_by_group

# Beyond configs/sr_v3.yaml's ranges on every step (its ranges are AcquisitionConfig's defaults).
SHIFT = AcquisitionConfig(
    resolution_probability=0.5,
    resolution_size=Range(low=112, high=160),
    tone_probability=0.5,
    tone_gamma=Range(low=1.4, high=1.8),
    local_contrast_probability=0.5,
    local_contrast_gain=Range(low=0.6, high=1.0),
    local_contrast_radius=Range(low=8, high=32),
    unsharp_probability=0.5,
    unsharp_radius=Range(low=1.0, high=4.0),
    unsharp_amount=Range(low=1.5, high=2.5),
    noise_probability=0.5,
    noise_sigma=Range(low=4.0, high=8.0),
    jpeg_probability=0.5,
    jpeg_quality=Range(low=30, high=60),
)


def _decode_png(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)))


def shifted_film(hr: np.ndarray, seed: int, index: int) -> tuple[np.ndarray, dict[str, float]]:
    """``hr`` as a hospital beyond the training ranges might have stored it (`SHIFT`), and what was done to it."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    draw = draw_acquisition(1, SHIFT, generator)
    film = torch.from_numpy(hr.astype(np.float32) / 127.5 - 1.0)[None, None]
    shifted = apply_acquisition(film, draw)[0, 0]
    return ((shifted.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy(), draw.describe(0)


def evaluate_served(
    engines_dir: Path,
    model: str,
    data_root: Path,
    split: str,
    out_dir: Path,
    steps: int | None,
    seed: int,
    threads: int | None = None,
    precision: str | None = None,
    samples: int | None = None,
    degradation: Degradation = "cubic",
    sources: Sequence[str] | None = None,
    limit: int | None = None,
    shift: bool = False,
) -> dict:
    """Writes ``served_report.json`` and ``served_report.md`` to ``out_dir``; returns the report.

    ``steps`` and ``samples`` both None ask for the model's default answer (the one-pass estimate for a model
    that says so); naming either runs the loop, the other at the model's default. ``sources`` keeps only those
    sources' images; ``limit`` keeps N of them evenly spaced through splits.csv's order (which is by file name, so
    a prefix would be one source).
    """
    rows = [row for row in read_splits(data_root) if row.split == split]
    if sources:
        rows = [row for row in rows if row.source in sources]
    if limit and limit < len(rows):
        rows = [rows[index] for index in np.unique(np.linspace(0, len(rows) - 1, limit).round().astype(int))]
    if not rows:
        raise ValueError(f"{data_root}/splits.csv has no {split!r} images of sources {sources or 'any'}")
    params: dict[str, int] = {"seed": seed}
    if steps is not None:
        params["steps"] = steps
    if samples is not None:
        params["samples"] = samples
    per_image = []
    started = time.monotonic()
    server = local_server(engines_dir, model, threads, precision=precision)
    with server as base_url, httpx.Client(base_url=base_url, timeout=300) as client:
        version = client.get("/readyz").json().get("version")
        for index, row in enumerate(rows):
            hr = np.array(Image.open(data_root / "HR_256" / row.filename))
            film: dict[str, float] = {}
            if shift:
                hr, film = shifted_film(hr, seed, index)
            lr = (
                np.array(Image.open(data_root / "LR_64" / row.filename))
                if degradation == "cubic" and not shift
                else make_lr(hr, hr.shape[0] // 4, degradation)
            )
            response = client.post(
                "/upscale",
                params=params,
                content=encode_png(lr),
                headers={"Content-Type": "image/png", "Accept": "application/json"},
            )
            if response.status_code != 200:
                raise RuntimeError(f"{row.filename}: the server answered {response.status_code}: {response.text}")
            answer = response.json()
            served = _decode_png(base64.b64decode(answer["image_png_base64"]))
            uncertainty = None
            if answer.get("uncertainty_png_base64"):
                levels = _decode_png(base64.b64decode(answer["uncertainty_png_base64"]))
                uncertainty = levels.astype(np.float32) * float(answer.get("uncertainty_scale") or UNCERTAINTY_SCALE)
            per_image.append(
                {
                    "filename": row.filename,
                    "source": row.source or "unknown",
                    **score_image(served, hr, lr, uncertainty),
                    "stage_ms": answer["stage_ms"],
                    "answer": answer.get("answer", "samples"),
                    "steps": answer["steps"],
                    "samples": answer["samples"],
                    **({"shift": film} if shift else {}),
                }
            )
    summary = summarize_by_group(per_image)
    report = {
        "summary": summary,
        "settings": {
            "engines": str(engines_dir / model),
            "model_version": version,
            "precision": precision or "fp32",
            "split": split,
            "images": len(per_image),
            "sources": sorted({record["source"] for record in per_image}),
            "degradation": degradation,
            "shift": shift,
            "answer": per_image[0]["answer"],
            "steps": per_image[0]["steps"],
            "samples": per_image[0]["samples"],
            "seed": seed,
            "data_root": str(data_root),
        },
        "wall_seconds": round(time.monotonic() - started, 1),
        "total_ms_p50": round(float(np.median([record["stage_ms"]["total"] for record in per_image])), 1),
        "per_image": per_image,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "served_report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "served_report.md").write_text(markdown_table(report))
    return report


def markdown_table(report: dict) -> str:
    settings = report["settings"]
    answer = (
        "the one-pass estimate"
        if settings.get("answer") == "estimate"
        else f"{settings['steps']} steps, {settings['samples']} sample(s)"
    )
    title = (
        f"{settings['model_version']} ({settings['precision']}) through `xraysr serve`: {settings['split']} split, "
        f"LR made by `{settings['degradation']}`{' from shifted films (SHIFT)' if settings.get('shift') else ''}, "
        f"{answer}, seed {settings['seed']}, server total p50 {report.get('total_ms_p50', '?')} ms. PSNR (dB) and "
        "SSIM on 8-bit 256×256 against HR; wins = share of images with a higher PSNR than the baseline."
    )
    return markdown_summary(report["summary"], title)
