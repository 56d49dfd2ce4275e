"""`xraysr evaluate-served`: the shipped engines, through a real `xraysr serve`, against HR and bicubic.

Each LR PNG of a split is POSTed to /upscale exactly as a user would send it; the PNG that comes back is
scored with the same 8-bit metrics as `xraysr evaluate`, so the two reports compare line for line.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from service.local_server import local_server
from training.data import read_splits
from training.metrics import bicubic_upscale, psnr, ssim


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def evaluate_served(
    engines_dir: Path,
    model: str,
    data_root: Path,
    split: str,
    out_dir: Path,
    steps: int,
    seed: int,
    threads: int | None = None,
    precision: str | None = None,
) -> dict:
    rows = [row for row in read_splits(data_root) if row.split == split]
    if not rows:
        raise ValueError(f"{data_root}/splits.csv has no {split!r} images")
    per_image = []
    started = time.monotonic()
    server = local_server(engines_dir, model, threads, precision=precision)
    with server as base_url, httpx.Client(base_url=base_url, timeout=120) as client:
        version = client.get("/readyz").json().get("version")
        for row in rows:
            lr_png = (data_root / "LR_64" / row.filename).read_bytes()
            response = client.post(
                "/upscale", params={"steps": steps, "seed": seed}, content=lr_png, headers={"Content-Type": "image/png"}
            )
            if response.status_code != 200:
                raise RuntimeError(f"{row.filename}: the server answered {response.status_code}: {response.text}")
            served = np.array(Image.open(io.BytesIO(response.content)))
            hr = np.array(Image.open(data_root / "HR_256" / row.filename))
            bicubic = bicubic_upscale(np.array(Image.open(data_root / "LR_64" / row.filename)), hr.shape[0])
            per_image.append(
                {
                    "filename": row.filename,
                    "psnr_model": psnr(served, hr),
                    "ssim_model": ssim(served, hr),
                    "psnr_bicubic": psnr(bicubic, hr),
                    "ssim_bicubic": ssim(bicubic, hr),
                    "server_timing": response.headers["Server-Timing"],
                }
            )
    summary = {
        method: {metric: _mean_std([r[f"{metric}_{method}"] for r in per_image]) for metric in ("psnr", "ssim")}
        for method in ("bicubic", "model")
    }
    wins = sum(r["psnr_model"] > r["psnr_bicubic"] for r in per_image)
    report = {
        "summary": summary,
        "settings": {
            "engines": str(engines_dir / model),
            "model_version": version,
            "precision": precision or "fp32",
            "split": split,
            "images": len(per_image),
            "steps": steps,
            "seed": seed,
            "data_root": str(data_root),
        },
        "images_where_model_beats_bicubic_psnr": wins,
        "wall_seconds": round(time.monotonic() - started, 1),
        "per_image": per_image,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "served_report.json").write_text(json.dumps(report, indent=2))
    return report
