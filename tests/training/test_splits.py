"""Keeping an earlier split when a source is added: no image a trained model saw moves into validation or test."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from xraysr.training.prepare_metadata import ImageMeta
from xraysr.training.splits import read_patient_splits, split_by_patient, splits_table


def _records(source: str, prefix: str, patients: range) -> list[ImageMeta]:
    return [ImageMeta(f"{prefix}{index}.png", f"nih:{index}", None, source) for index in patients]


def test_adding_a_source_that_shares_patients_moves_old_images_unless_the_old_split_is_kept(tmp_path: Path) -> None:
    old = _records("nih_starter", "s", range(60))
    old_split = split_by_patient(old, seed=0)
    # The new source shares patients 50-59 with the old one and sorts first, so it takes them into its stratum.
    added = old + _records("nih_more", "m", range(50, 90))
    reshuffled = split_by_patient(added, seed=0)
    moved = [record.filename for record in old if reshuffled[record.filename] != old_split[record.filename]]
    assert moved, "the rule without kept patients reshuffles the old source (what keep_splits exists for)"

    (tmp_path / "splits.csv").write_text(splits_table(old, old_split))
    kept = read_patient_splits(tmp_path / "splits.csv")
    split_of = split_by_patient(added, seed=0, kept_patients=kept)
    assert all(split_of[record.filename] == old_split[record.filename] for record in old)
    # A patient of the new source already known keeps its old split; the unknown ones are split 70/20/10.
    shared = [record for record in added if record.source == "nih_more" and record.patient_id in kept]
    assert shared and all(split_of[record.filename] == kept[record.patient_id] for record in shared)
    new_patients = {record.patient_id for record in added if record.patient_id not in kept}
    counts = Counter(split_of[f"m{patient.split(':')[1]}.png"] for patient in new_patients)
    total = len(new_patients)
    assert counts == {
        "train": round(0.7 * total),
        "val": round(0.9 * total) - round(0.7 * total),
        "test": total - round(0.9 * total),
    }


def test_read_patient_splits_refuses_a_patient_in_two_splits_and_an_unknown_split(tmp_path: Path) -> None:
    path = tmp_path / "splits.csv"
    path.write_text("filename,patient_id,view,split,source\na.png,p1,PA,train,x\nb.png,p1,PA,test,x\n")
    with pytest.raises(ValueError, match="p1 is in two splits"):
        read_patient_splits(path)
    path.write_text("filename,patient_id,view,split,source\na.png,p1,PA,holdout,x\n")
    with pytest.raises(ValueError, match="holdout"):
        read_patient_splits(path)
