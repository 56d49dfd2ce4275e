"""Scores of served reports on one set of images: the images every report scored, or those of them in a JSON list
of file names (e.g. the 96 adult validation images of docs/scripts/estimate_input.py), so candidates compare fairly.

    python docs/scripts/compare_on_images.py runs/eval/val/v3_2500_estimate runs/eval/val/v3_2000_estimate \
        [--files runs/estimate_input/val96_files.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("reports", nargs="+", type=Path, help="folders holding served_report.json")
    parser.add_argument("--files", type=Path, help="a JSON list of file names to keep")
    args = parser.parse_args()
    reports = {path: json.loads((path / "served_report.json").read_text()) for path in args.reports}
    common = set.intersection(*({row["filename"] for row in report["per_image"]} for report in reports.values()))
    if args.files:
        common &= set(json.loads(args.files.read_text()))
    print(f"{len(common)} images")
    print("| report | ΔPSNR vs bicubic | ΔSSIM | wins vs bicubic | wins vs bilinear | p50 ms |")
    print("|---|---|---|---|---|---|")
    for path, report in reports.items():
        rows = [row for row in report["per_image"] if row["filename"] in common]
        delta = np.array([row["psnr_model"] - row["psnr_bicubic"] for row in rows])
        delta_ssim = np.array([row["ssim_model"] - row["ssim_bicubic"] for row in rows])
        bilinear = np.array([row["psnr_model"] > row["psnr_bilinear"] for row in rows])
        p50 = np.median([row["stage_ms"]["total"] for row in rows])
        print(
            f"| {path.name} | {delta.mean():+.3f} dB | {delta_ssim.mean():+.4f} | {100 * (delta > 0).mean():.1f}% "
            f"| {100 * bilinear.mean():.1f}% | {p50:.0f} |"
        )


if __name__ == "__main__":
    main()
