"""Is the estimate too bold where the model has not been? Scale its latent residual over bicubic by alpha.

The estimate is lr_latent + x0 / target_scale; this scores lr_latent + alpha * x0 / target_scale for several alpha
on the images of the given sources and split (in-process, FP32), against HR. Issue 15 asks for any such shrinkage
to be chosen on the left-out source (a leave-one-source-out model's validation images of the source it never
saw), never on a test split.

    python docs/scripts/residual_scale.py --engines runs/engines/loso_without_cxr/cxr-default --data runs/data/all5 \
        --sources cxr --split val
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

# The script's folder is on sys.path when it runs: the estimate's arithmetic is estimate_input.py's, not a copy.
from estimate_input import estimate_latents, fp32_pipeline
from PIL import Image

from xraysr.service.pipeline import to_pixels
from xraysr.service.sampler import estimate_input
from xraysr.training.data import read_splits
from xraysr.training.metrics import bicubic_upscale, psnr, ssim

ALPHAS = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--sources", required=True)
    parser.add_argument("--split", default="val", choices=["train", "val"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    pipeline = fp32_pipeline(args.engines, args.threads)
    manifest, runtime = pipeline.manifest, pipeline.runtime
    sources = args.sources.split(",")
    rows = [row for row in read_splits(args.data) if row.split == args.split and row.source in sources]
    shape = (1, manifest.latent.channels, manifest.latent.size, manifest.latent.size)
    scores: dict[float, list[tuple[float, float, float]]] = {alpha: [] for alpha in ALPHAS}
    for row in rows:
        hr = np.array(Image.open(args.data / "HR_256" / row.filename))
        lr = np.array(Image.open(args.data / "LR_64" / row.filename))
        bicubic = psnr(bicubic_upscale(lr, 256), hr)
        lr_latent, x0 = estimate_latents(pipeline, lr, [estimate_input(shape)])
        for alpha in ALPHAS:
            hr_latent = (lr_latent + alpha * x0).astype(np.float32)
            image = to_pixels(runtime.run("decoder", {"hr_latent": hr_latent})[0, 0])
            scores[alpha].append((psnr(image, hr), ssim(image, hr), bicubic))
    print(f"{manifest.version} on {len(rows)} {args.split} images of {sources}: the estimate with its residual x alpha")
    print("| alpha | PSNR | ΔPSNR vs bicubic | SSIM | wins vs bicubic |\n|---|---|---|---|---|")
    report = {}
    for alpha, values in scores.items():
        array = np.array(values)
        delta = array[:, 0] - array[:, 2]
        report[str(alpha)] = {
            "psnr": float(array[:, 0].mean()),
            "delta_psnr": float(delta.mean()),
            "ssim": float(array[:, 1].mean()),
            "wins": float((delta > 0).mean()),
        }
        r = report[str(alpha)]
        print(f"| {alpha} | {r['psnr']:.3f} | {r['delta_psnr']:+.3f} | {r['ssim']:.4f} | {100 * r['wins']:.1f}% |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"images": len(rows), "alphas": report}, indent=2))


if __name__ == "__main__":
    main()
