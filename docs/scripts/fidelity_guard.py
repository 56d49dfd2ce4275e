"""The fidelity guard's numbers in docs/RESULTS.md: consistency PSNR of the model and of bicubic, and what
``consistency=enforce`` does to PSNR/SSIM against the real high-resolution image.

    .venv/bin/python docs/scripts/fidelity_guard.py --split test --group adult --out runs/fidelity/test_adult

Each LR_64 image of the split is upscaled in-process by the shipped default model (the pipeline /upscale runs;
default steps and samples, one fixed seed), and its output kept under ``OUT/outputs/`` so that a rerun only
scores. Then, per image: ``lr_consistency_psnr`` (service/consistency.py, what X-LR-Consistency-PSNR reports) of
the output, of bicubic and of the output enforced with 1..N back-projection iterations; PSNR and SSIM against HR
of each (training/metrics.py, the definitions every table in docs/RESULTS.md uses). Writes ``OUT/report.json``
and prints a summary: mean, 1st and 5th percentiles.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import spearmanr

from xraysr.service.consistency import bicubic_upscale, enforce_consistency, lr_consistency_psnr
from xraysr.service.engine import load_pipeline
from xraysr.service.imaging import encode_png
from xraysr.service.pipeline import choose_answer
from xraysr.service.settings import Settings
from xraysr.training.data import read_splits
from xraysr.training.metrics import psnr, ssim
from xraysr.training.scoring import PEDIATRIC_SOURCES


def _rows(data_root: Path, split: str, group: str) -> dict[str, str]:
    """File name → source, for the split's images of the group."""
    rows = [row for row in read_splits(data_root) if row.split == split]
    pediatric = [row for row in rows if row.source in PEDIATRIC_SOURCES]
    adult = [row for row in rows if row.source not in PEDIATRIC_SOURCES]
    return {row.filename: row.source or "unknown" for row in (adult if group == "adult" else pediatric)}


def _upscale_all(filenames: list[str], data_root: Path, outputs: Path, seed: int) -> tuple[int, int, str]:
    pipeline = load_pipeline(Settings(precision="fp32"), warm_up=False)
    plan = choose_answer(pipeline.manifest.sampler)  # the default answer: the estimate for cxr-default 3.x
    outputs.mkdir(parents=True, exist_ok=True)
    # Kept outputs are only scored again: they must come from the model being reported.
    made_by = outputs / "model_version.txt"
    if made_by.is_file() and made_by.read_text().strip() != pipeline.manifest.version:
        raise SystemExit(
            f"{outputs} holds outputs of {made_by.read_text().strip()}, not of the served "
            f"{pipeline.manifest.version}: give a new --out"
        )
    made_by.write_text(pipeline.manifest.version + "\n")
    started = time.monotonic()
    for index, filename in enumerate(filenames):
        target = outputs / filename
        if target.is_file():
            continue
        lr = np.array(Image.open(data_root / "LR_64" / filename))
        result = pipeline.answer(lr, plan, seed)
        target.write_bytes(encode_png(result.image))
        if index % 20 == 0:
            print(f"{index + 1}/{len(filenames)} upscaled, {time.monotonic() - started:.0f} s", flush=True)
    return plan.steps, plan.samples, pipeline.manifest.version


def _score(filename: str, data_root: Path, outputs: Path, iterations: int) -> dict[str, float | str]:
    hr = np.array(Image.open(data_root / "HR_256" / filename))
    lr = np.array(Image.open(data_root / "LR_64" / filename))
    model = np.array(Image.open(outputs / filename))
    candidates = {"model": model, "bicubic": bicubic_upscale(lr, hr.shape[0])}
    for count in range(1, iterations + 1):
        candidates[f"enforce{count}"] = enforce_consistency(lr, model, count)
    scores: dict[str, float | str] = {"filename": filename}
    for name, image in candidates.items():
        scores[f"consistency_{name}"] = lr_consistency_psnr(lr, image)
        scores[f"psnr_{name}"] = psnr(image, hr)
        scores[f"ssim_{name}"] = ssim(image, hr)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("runs/data/all"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--group", choices=["adult", "pediatric"], default="adult")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=6, help="score enforce with 1..N iterations")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    sources = _rows(args.data, args.split, args.group)
    steps, samples, version = _upscale_all(list(sources), args.data, args.out / "outputs", args.seed)
    per_image = [
        {**_score(filename, args.data, args.out / "outputs", args.iterations), "source": source}
        for filename, source in sources.items()
    ]
    keys = [key for key in per_image[0] if key not in ("filename", "source")]
    summary = {}
    for key in keys:
        values = np.array([float(record[key]) for record in per_image])
        summary[key] = {
            "mean": round(float(values.mean()), 4),
            "p1": round(float(np.percentile(values, 1)), 4),
            "p5": round(float(np.percentile(values, 5)), 4),
            "min": round(float(values.min()), 4),
        }
    report = {
        "relations": _relations(per_image, low_db=Settings.model_fields["lr_consistency_low_db"].default),
        "settings": {
            "model_version": version,
            "split": args.split,
            "group": args.group,
            "images": len(per_image),
            "steps": steps,
            "samples": samples,
            "seed": args.seed,
            "data": str(args.data),
        },
        "summary": summary,
        "per_image": per_image,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report["settings"]))
    for key, values in summary.items():
        print(f"{key:24s} mean {values['mean']:8.4f}  p1 {values['p1']:8.4f}  p5 {values['p5']:8.4f}")
    print(json.dumps(report["relations"], indent=1))
    print(markdown_table(summary, len(per_image), args.iterations))


def _relations(per_image: list[dict[str, float | str]], low_db: float) -> dict[str, float | str]:
    """What RESULTS.md says about the numbers beside the table: how consistency relates to quality."""

    def column(key: str) -> np.ndarray:
        return np.array([float(record[key]) for record in per_image])

    model, bicubic = column("consistency_model"), column("consistency_bicubic")
    sources = np.array([record["source"] for record in per_image])
    per_source = {
        f"consistency_model_mean_{source}": float(model[sources == source].mean()) for source in sorted(set(sources))
    }
    gain = column("psnr_model") - column("psnr_bicubic")
    enforce_psnr = column("psnr_enforce4") - column("psnr_model")
    return {
        "share_less_consistent_than_bicubic": float((model < bicubic).mean()),
        "flagged_below_low_db": int((model < low_db).sum()),
        "rho_consistency_vs_psnr_model": float(spearmanr(model, column("psnr_model")).statistic),
        "rho_consistency_vs_psnr_bicubic": float(spearmanr(bicubic, column("psnr_bicubic")).statistic),
        "rho_consistency_gap_vs_psnr_gain": float(spearmanr(model - bicubic, gain).statistic),
        "enforce4_delta_psnr_mean": float(enforce_psnr.mean()),
        "enforce4_delta_psnr_min": float(enforce_psnr.min()),
        "enforce4_delta_psnr_max": float(enforce_psnr.max()),
        "enforce4_share_better_psnr": float((enforce_psnr > 0).mean()),
        "enforce4_delta_ssim_mean": float((column("ssim_enforce4") - column("ssim_model")).mean()),
        **per_source,
        "flagged": ", ".join(
            f"{record['filename']} ({float(record['consistency_model']):.2f} dB, "
            f"{float(record['psnr_model']) - float(record['psnr_bicubic']):+.2f} dB vs bicubic)"
            for record in per_image
            if float(record["consistency_model"]) < low_db
        ),
    }


def markdown_table(summary: dict[str, dict[str, float]], images: int, iterations: int) -> str:
    """The docs/RESULTS.md table: one row per answer (the model's, enforced, bicubic)."""
    lines = [
        f"| answer (n = {images}) | consistency PSNR mean (dB) | 5th pct | 1st pct | PSNR vs HR (dB) | SSIM vs HR |",
        "|---|---|---|---|---|---|",
    ]
    names = ["model", *(f"enforce{count}" for count in range(1, iterations + 1)), "bicubic"]
    for name in names:
        label = {"model": "xraysr (consistency=report)", "bicubic": "bicubic"}.get(
            name, f"xraysr, consistency=enforce, {name.removeprefix('enforce')} iteration(s)"
        )
        consistency, psnr_hr, ssim_hr = (summary[f"{kind}_{name}"] for kind in ("consistency", "psnr", "ssim"))
        lines.append(
            f"| {label} | {consistency['mean']:.2f} | {consistency['p5']:.2f} | {consistency['p1']:.2f} | "
            f"{psnr_hr['mean']:.2f} | {ssim_hr['mean']:.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
