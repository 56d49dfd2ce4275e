"""Old vs re-exported engines on adult validation images: same seed, shipped defaults (25 steps, K = 4).

usage (from the repository root, with 2.1.0's files restored into runs/engines/v6k/cxr-default, e.g. by
`git archive 51df6b2 engines/cxr-default | tar -x -C /tmp` then copying):
    python docs/scripts/compare_2.1.0_2.1.1.py fp32|int8 runs/engines/v6k engines
"""
import csv
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from xraysr.service.engine import load_pipeline
from xraysr.service.settings import Settings
from xraysr.training.metrics import psnr

data = Path("runs/data/all")
precision = sys.argv[1]
dirs = {"old": Path(sys.argv[2]), "new": Path(sys.argv[3])}
with open(data / "splits.csv", newline="") as handle:
    rows = [r for r in csv.DictReader(handle) if r["split"] == "val" and r["source"] != "pediatric"]
rows = rows[:: len(rows) // 10][:10]  # evenly spaced: splits.csv is sorted by name, so a prefix is one source
images = {}
for name, engines in dirs.items():
    settings = Settings(engines_dir=engines, model="cxr-default", precision=precision, threads=2)
    pipeline = load_pipeline(settings, warm_up=False)
    print(name, pipeline.manifest.version, list(pipeline.manifest.components), flush=True)
    images[name] = []
    for row in rows:
        lr = np.array(Image.open(data / "LR_64" / row["filename"]))
        result = pipeline.upscale(lr, pipeline.manifest.sampler.default_steps, seed=0,
                                  samples=pipeline.manifest.sampler.default_samples)
        images[name].append(result.image)
hr = [np.array(Image.open(data / "HR_256" / row["filename"])) for row in rows]
diffs = [np.abs(a.astype(int) - b.astype(int)) for a, b in zip(images["old"], images["new"], strict=True)]
report = {
    "precision": precision,
    "files": [row["filename"] for row in rows],
    "max_abs_diff": int(max(d.max() for d in diffs)),
    "pixels_differing": int(sum((d > 0).sum() for d in diffs)),
    "bit_identical": all(not d.any() for d in diffs),
    "psnr_old_vs_new_db": psnr(np.concatenate(images["new"]), np.concatenate(images["old"])),
    "psnr_vs_hr_old": float(np.mean([psnr(i, h) for i, h in zip(images["old"], hr, strict=True)])),
    "psnr_vs_hr_new": float(np.mean([psnr(i, h) for i, h in zip(images["new"], hr, strict=True)])),
}
print(json.dumps(report, indent=1))

