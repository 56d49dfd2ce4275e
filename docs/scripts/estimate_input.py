"""Which one-pass estimate to serve: the x0 the UNet predicts at t = T-1 from a zero latent, or from a seed's noise.

For each adult validation image (every ``--stride``-th of splits.csv's adult validation rows): the loop the model
shipped with (its manifest's default steps and samples), one pass from seed 0's noise, the mean of one pass over
4 seeds' noise, and one pass from zeros; scored against HR like every number in docs/RESULTS.md.

    python docs/scripts/estimate_input.py --engines engines/cxr-default --data runs/data/all5 --limit 96
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from xraysr.service.engine import load_pipeline
from xraysr.service.pipeline import SRPipeline, to_pixels
from xraysr.service.sampler import DDIMSampler, estimate_input, initial_noise
from xraysr.service.settings import load_settings
from xraysr.training.data import read_splits
from xraysr.training.metrics import bicubic_upscale, psnr, ssim

ADULT = ("nih_starter", "nih", "cxr", "nih_more")


def fp32_pipeline(engines: Path, threads: int) -> SRPipeline:
    """The model folder ``engines`` (engines/<model>) in-process, FP32 (whatever `auto` would pick here)."""
    settings = load_settings(engines_dir=engines.parent, model=engines.name, precision="fp32", threads=threads)
    return load_pipeline(settings, warm_up=False)


def estimate_latents(pipeline: SRPipeline, lr: np.ndarray, starts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(lr_latent, x0 / target_scale) for each start: the UNet's x0 at the last timestep, the estimate's residual."""
    manifest, runtime = pipeline.manifest, pipeline.runtime
    sampler = DDIMSampler(manifest.sampler)
    (timestep,) = sampler.set_estimate()
    lr_latent = runtime.run("encoder", {"lr_image": (lr[None, None] / 127.5 - 1).astype(np.float32)})
    lr_latent = np.repeat(lr_latent, len(starts), axis=0)
    sample = np.concatenate(starts)
    prediction = runtime.run(
        "unet",
        {"noisy_latent": sample, "timestep": np.full(len(starts), timestep, np.float32), "lr_latent": lr_latent},
    )
    return lr_latent, sampler.step(prediction, int(timestep), sample) / manifest.latent.target_scale


def one_pass(pipeline: SRPipeline, lr: np.ndarray, starts: list[np.ndarray]) -> np.ndarray:
    """The mean over ``starts`` of the decoded x0 predicted at the last timestep from each start."""
    lr_latent, residual = estimate_latents(pipeline, lr, starts)
    hr = pipeline.runtime.run("decoder", {"hr_latent": (residual + lr_latent).astype(np.float32)})
    return to_pixels(hr[:, 0].mean(0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", type=Path, default=Path("engines/cxr-default"))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    pipeline = fp32_pipeline(args.engines, args.threads)
    spec = pipeline.manifest.sampler
    rows = [row for row in read_splits(args.data) if row.split == args.split and row.source in ADULT]
    rows = [rows[i] for i in np.unique(np.linspace(0, len(rows) - 1, min(args.limit, len(rows))).round().astype(int))]
    shape = (1, pipeline.manifest.latent.channels, pipeline.manifest.latent.size, pipeline.manifest.latent.size)
    scores: dict[str, list[tuple[float, float]]] = {}
    seconds: dict[str, float] = {}
    for row in rows:
        hr = np.array(Image.open(args.data / "HR_256" / row.filename))
        lr = np.array(Image.open(args.data / "LR_64" / row.filename))
        answers = {
            "bicubic": lambda lr: bicubic_upscale(lr, 256),
            f"loop {spec.default_steps} steps x {spec.default_samples}": lambda lr: pipeline.upscale(
                lr, spec.default_steps, 0, spec.default_samples
            ).image,
            "one pass, seed 0 noise": lambda lr: one_pass(pipeline, lr, [initial_noise(shape, 0)]),
            "one pass, mean over 4 seeds' noise": lambda lr: one_pass(
                pipeline, lr, [initial_noise(shape, seed) for seed in range(4)]
            ),
            "one pass, zero latent (served)": lambda lr: one_pass(pipeline, lr, [estimate_input(shape)]),
        }
        for name, make in answers.items():
            started = time.perf_counter()
            image = make(lr)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
            scores.setdefault(name, []).append((psnr(image, hr), ssim(image, hr)))
    bicubic = np.array(scores["bicubic"])
    report = {}
    print(f"{pipeline.manifest.version}, {len(rows)} adult {args.split} images of {args.data}")
    print("| answer | PSNR | ΔPSNR vs bicubic | ΔSSIM | wins vs bicubic | ms per image |\n|---|---|---|---|---|---|")
    for name, values in scores.items():
        values_array = np.array(values)
        delta = values_array - bicubic
        report[name] = {
            "psnr": float(values_array[:, 0].mean()),
            "delta_psnr": float(delta[:, 0].mean()),
            "delta_ssim": float(delta[:, 1].mean()),
            "wins": float((delta[:, 0] > 0).mean()),
            "ms": 1000 * seconds[name] / len(rows),
        }
        r = report[name]
        print(
            f"| {name} | {r['psnr']:.3f} | {r['delta_psnr']:+.3f} | {r['delta_ssim']:+.4f} | {100 * r['wins']:.0f}% "
            f"| {r['ms']:.0f} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"images": len(rows), "rows": report}, indent=2))


if __name__ == "__main__":
    main()
