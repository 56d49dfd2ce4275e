"""Fixtures shared by the whole suite: where the real shared data lives, and small data roots built on it."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def build_cxr_root(root: Path, splits: list[str]) -> Path:
    """A prepared-data folder whose images are links to the first len(splits) shared CXR pairs."""
    cxr = SHARED_DATA / "cxr"
    if not (cxr / "HR_256").is_dir():
        pytest.skip(f"shared CXR development set not found at {cxr}")
    names = sorted(path.name for path in (cxr / "HR_256").glob("*.png"))[: len(splits)]
    for folder in ("HR_256", "LR_64"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / folder / name).symlink_to(cxr / folder / name)
    with (root / "splits.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "patient_id", "view", "split"])
        for index, (name, split) in enumerate(zip(names, splits, strict=False)):
            writer.writerow([name, f"patient{index}", "PA", split])
    return root


@pytest.fixture(scope="session")
def tiny_cxr_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 train, 2 val, 2 test pairs of real chest X-rays."""
    return build_cxr_root(tmp_path_factory.mktemp("tiny_cxr"), ["train"] * 4 + ["val"] * 2 + ["test"] * 2)
