"""The README's picture: LR | bicubic | xraysr | HR for the first adult NIH test images, through the shipped
engines with the model's default answer (the one-pass estimate for cxr-default 3.x; seed 0 for a loop).

    python docs/scripts/readme_grid.py --data runs/data/all --out docs/images/test_grid.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from xraysr.service.engine import load_pipeline
from xraysr.service.pipeline import choose_answer
from xraysr.service.settings import load_settings
from xraysr.training.visualize import comparison_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="a prepared folder (xraysr prepare)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--source", default="nih_starter", help="which source's test images")
    parser.add_argument("--count", type=int, default=4)
    args = parser.parse_args()
    with (args.data / "splits.csv").open() as handle:
        wanted = ("test", args.source)
        names = [row["filename"] for row in csv.DictReader(handle) if (row["split"], row["source"]) == wanted]
    pipeline = load_pipeline(load_settings(precision="fp32"), warm_up=False)
    plan = choose_answer(pipeline.manifest.sampler)
    rows = []
    for name in names[: args.count]:
        lr = np.asarray(Image.open(args.data / "LR_64" / name))
        hr = np.asarray(Image.open(args.data / "HR_256" / name))
        bicubic = np.clip(cv2.resize(lr, hr.shape[::-1], interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)
        sr = pipeline.answer(lr, plan, seed=0).image
        rows.append([lr, bicubic, sr, hr])
        print(name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(comparison_grid(rows)).save(args.out, optimize=True)
    print(f"{args.out}: {pipeline.manifest.version}, {plan}")


if __name__ == "__main__":
    main()
