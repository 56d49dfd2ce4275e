"""The perception–distortion picture, and whether the loop should run to t = 0 (docs/RESULTS.md).

``--split test``: on the adult test images, PSNR, SSIM, sharpness (mean gradient magnitude over HR's) and GMSD
(Xue et al. 2014, a weight-free perceptual index; lower is better) for bicubic, bilinear, the estimate, one
diffusion sample and the mean of K, through the service's own pipeline; writes docs/images/perception_distortion.svg.
``--split val --final-timesteps 400 0``: the same for the loop stopping at each final timestep, on every
``--every``-th adult validation image: the decision of where samples should stop.

    .venv/bin/python docs/scripts/perception_distortion.py --split test
    .venv/bin/python docs/scripts/perception_distortion.py --split val --final-timesteps 400 0 --every 8
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from xraysr.service.consistency import bicubic_upscale
from xraysr.service.engine import load_pipeline
from xraysr.service.manifest import read_manifest, write_manifest
from xraysr.service.pipeline import choose_answer
from xraysr.service.settings import load_settings
from xraysr.training.calibrate_interval import CHILDREN
from xraysr.training.metrics import psnr, ssim
from xraysr.training.scoring import bilinear_upscale, gradient_magnitude
from xraysr.training.splits import read_splits

MODEL = Path("engines/cxr-default")
DATA = Path("runs/data/all5")
FIGURE = Path("docs/images/perception_distortion.svg")


def gmsd(image: np.ndarray, reference: np.ndarray) -> float:
    """Gradient magnitude similarity deviation (Xue et al. 2014): 2x2 average, Prewitt gradients, c = 170."""

    def magnitude(values: np.ndarray) -> np.ndarray:
        values = values.astype(np.float64)
        height, width = (values.shape[0] // 2) * 2, (values.shape[1] // 2) * 2
        small = values[:height, :width].reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))
        padded = np.pad(small, 1, mode="edge")
        columns = (
            padded[:-2, 2:] + padded[1:-1, 2:] + padded[2:, 2:] - padded[:-2, :-2] - padded[1:-1, :-2] - padded[2:, :-2]
        ) / 3
        rows = (
            padded[2:, :-2] + padded[2:, 1:-1] + padded[2:, 2:] - padded[:-2, :-2] - padded[:-2, 1:-1] - padded[:-2, 2:]
        ) / 3
        return np.hypot(rows, columns)

    first, second = magnitude(image), magnitude(reference)
    similarity = (2 * first * second + 170) / (first**2 + second**2 + 170)
    return float(similarity.std())


def scores(image: np.ndarray, hr: np.ndarray) -> dict[str, float]:
    return {
        "psnr": psnr(image, hr),
        "ssim": ssim(image, hr),
        "sharpness": gradient_magnitude(image) / max(gradient_magnitude(hr), 1e-9),
        "gmsd": gmsd(image, hr),
    }


def model_at(final_timestep: int, folder: Path) -> Path:
    """The shipped model's files with the loop stopping at ``final_timestep`` (a copy of its manifest)."""
    model = folder / f"stop{final_timestep}"
    model.mkdir()
    for file in MODEL.iterdir():
        if file.suffix == ".onnx":
            (model / file.name).symlink_to(file.resolve())
    manifest = read_manifest(MODEL)
    sampler = manifest.sampler.model_copy(update={"final_timestep": final_timestep})
    write_manifest(manifest.model_copy(update={"sampler": sampler}), model)
    return model


def run(split: str, every: int, final_timestep: int | None, samples: int) -> dict[str, dict[str, float]]:
    from PIL import Image

    rows = [row for row in read_splits(DATA) if row.split == split and row.source != CHILDREN][::every]
    with tempfile.TemporaryDirectory() as scratch:
        model = MODEL if final_timestep is None else model_at(final_timestep, Path(scratch))
        settings = load_settings(engines_dir=model.parent, model=model.name, precision="fp32")
        pipeline = load_pipeline(settings, warm_up=False)
        sampler = pipeline.manifest.sampler
        loop = choose_answer(sampler, sampler.default_steps, samples)
        per_method: dict[str, list[dict[str, float]]] = {}
        spreads = []
        for index, row in enumerate(rows):
            lr = np.asarray(Image.open(DATA / "LR_64" / row.filename))
            hr = np.asarray(Image.open(DATA / "HR_256" / row.filename))
            looped = pipeline.answer(lr, loop, index * samples)
            assert looped.sample_images is not None and looped.uncertainty is not None
            spreads.append(float(looped.uncertainty.mean()))
            images = {
                "bicubic": bicubic_upscale(lr, 256),
                "bilinear": bilinear_upscale(lr, 256),
                "estimate": pipeline.estimate(lr).image,
                "one diffusion sample": looped.sample_images[0],
                f"mean of {samples} samples": looped.image,
            }
            for method, image in images.items():
                per_method.setdefault(method, []).append(scores(image, hr))
    summary = {
        method: {key: float(np.mean([s[key] for s in values])) for key in values[0]}
        for method, values in per_method.items()
    }
    summary[f"mean of {samples} samples"]["spread"] = float(np.mean(spreads))
    summary["images"] = {"count": float(len(rows))}
    return summary


def table(summary: dict[str, dict[str, float]]) -> str:
    lines = ["| method | PSNR (dB) | SSIM | sharpness (HR = 1) | GMSD (lower better) |", "|---|---|---|---|---|"]
    for method, values in summary.items():
        if method != "images":
            lines.append(
                f"| {method} | {values['psnr']:.2f} | {values['ssim']:.4f} | {values['sharpness']:.3f} "
                f"| {values['gmsd']:.4f} |"
            )
    return "\n".join(lines)


def figure(summary: dict[str, dict[str, float]], path: Path) -> None:
    """PSNR against sharpness, one point per method: a small hand-written SVG (no plotting package needed)."""
    points = {method: (v["sharpness"], v["psnr"]) for method, v in summary.items() if method != "images"}
    xs, ys = [p[0] for p in points.values()] + [1.0], [p[1] for p in points.values()]
    x0, x1, y0, y1 = min(xs) - 0.05, max(xs) + 0.05, min(ys) - 0.3, max(ys) + 0.3
    width, height, margin = 560, 360, 60

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            margin + (x - x0) / (x1 - x0) * (width - 2 * margin),
            height - margin - (y - y0) / (y1 - y0) * (height - 2 * margin),
        )

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<line x1="{margin}" y1="{height - margin}" x2="{width - margin}" y2="{height - margin}" stroke="black"/>',
        f'<line x1="{margin}" y1="{margin}" x2="{margin}" y2="{height - margin}" stroke="black"/>',
        f'<text x="{width / 2}" y="{height - 20}" text-anchor="middle">'
        "sharpness (mean gradient / HR's; 1 = as sharp as the truth)</text>",
        f'<text x="18" y="{height / 2}" transform="rotate(-90 18 {height / 2})" text-anchor="middle">'
        "PSNR (dB), adult test</text>",
    ]
    hr_x, _ = at(1.0, y0)
    parts.append(
        f'<line x1="{hr_x}" y1="{margin}" x2="{hr_x}" y2="{height - margin}" stroke="#999" stroke-dasharray="4"/>'
    )
    parts.append(f'<text x="{hr_x + 4}" y="{margin + 12}" fill="#666">HR</text>')
    for tick in np.linspace(y0, y1, 5):
        _, y = at(x0, tick)
        parts.append(f'<text x="{margin - 6}" y="{y + 4}" text-anchor="end">{tick:.1f}</text>')
    for tick in np.linspace(x0, x1, 5):
        x, _ = at(tick, y0)
        parts.append(f'<text x="{x}" y="{height - margin + 16}" text-anchor="middle">{tick:.2f}</text>')
    for method, (sharpness, value) in points.items():
        x, y = at(sharpness, value)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="#2b6cb0"/>')
        parts.append(f'<text x="{x + 8:.1f}" y="{y - 6:.1f}">{method}</text>')
    parts.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--final-timesteps", type=int, nargs="*", default=[])
    args = parser.parse_args()
    for final_timestep in args.final_timesteps or [None]:
        summary = run(args.split, args.every, final_timestep, args.samples)
        stop = "the manifest's" if final_timestep is None else str(final_timestep)
        print(f"\n{args.split}, {int(summary['images']['count'])} adult images, loop stopping at t = {stop}:\n")
        print(table(summary))
        spread = summary[f"mean of {args.samples} samples"]["spread"]
        print(f"\nmean spread of the {args.samples} samples: {spread:.2f} grey levels")
        if args.split == "test" and final_timestep is None:
            figure(summary, FIGURE)


if __name__ == "__main__":
    main()
