"""The patient-disjoint train/val/test split and its index file, ``splits.csv``.

One rule for every prepared set, one source or several: a patient is in exactly one split, and each
source (stratum) is split in the same proportions, so every source has test images to report on.
"""

from __future__ import annotations

import csv
import io
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast, get_args

from xraysr.training.config import Split

SPLITS: tuple[Split, ...] = ("train", "val", "test")
SPLITS_COLUMNS = ("filename", "patient_id", "view", "split", "source")


class Record(Protocol):
    @property
    def filename(self) -> str: ...

    @property
    def patient_id(self) -> str: ...

    @property
    def view(self) -> str | None: ...

    @property
    def source(self) -> str: ...


def _check_fractions(fractions: tuple[float, float, float]) -> None:
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three positive numbers summing to 1, not {fractions}")


def _split_patients(patients: list[str], seed: int, fractions: tuple[float, float, float]) -> dict[str, Split]:
    """The P sorted patients shuffled with ``random.Random(seed)``; the first ``round(f_train * P)`` go to
    train, those up to ``round((f_train + f_val) * P)`` to val, the rest to test. With 3 or more patients
    every split gets at least one."""
    patients = sorted(patients)
    random.Random(seed).shuffle(patients)
    count = len(patients)
    train_end, val_end = round(fractions[0] * count), round((fractions[0] + fractions[1]) * count)
    if count >= 3:
        train_end = min(max(train_end, 1), count - 2)
        val_end = min(max(val_end, train_end + 1), count - 1)
    return {
        patient: "train" if index < train_end else "val" if index < val_end else "test"
        for index, patient in enumerate(patients)
    }


def split_by_patient(
    records: Iterable[Record],
    seed: int,
    fractions: tuple[float, float, float] = (0.7, 0.2, 0.1),
    kept_patients: Mapping[str, Split] | None = None,
) -> dict[str, Split]:
    """Assign each image to train/val/test with no patient in two splits; returns ``{filename: split}``.

    The rule counts patients, not images, so image shares match only on average. Patients are split per
    stratum: the alphabetically first source a patient appears in (a patient id shared by two sources, as
    NIH ids are, still lands in one split). With one source this is a plain split of its patients.

    ``kept_patients`` (``{patient_id: split}``, from an earlier set's splits.csv) pins those patients to their
    old split and splits only the others. Adding a source otherwise reshuffles the strata it touches, and a
    model trained on the old train split would then be scored on its own training images.
    """
    _check_fractions(fractions)
    records = list(records)
    kept_patients = kept_patients or {}
    sources_of: dict[str, set[str]] = defaultdict(set)
    for record in records:
        sources_of[record.patient_id].add(record.source)
    strata: dict[str, list[str]] = defaultdict(list)
    for patient, sources in sources_of.items():
        if patient not in kept_patients:
            strata[min(sources)].append(patient)
    split_of_patient: dict[str, Split] = {
        patient: split for patient, split in kept_patients.items() if patient in sources_of
    }
    for stratum in sorted(strata):
        split_of_patient.update(_split_patients(strata[stratum], seed, fractions))
    return {record.filename: split_of_patient[record.patient_id] for record in records}


def read_patient_splits(path: Path) -> dict[str, Split]:
    """``{patient_id: split}`` of an earlier set's splits.csv; a patient found in two splits is an error."""
    split_of: dict[str, Split] = {}
    with Path(path).open(newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            split = row.get("split")
            if split not in SPLITS:
                raise ValueError(f"{path} line {line}: split {split!r} is not one of {SPLITS}")
            if split_of.setdefault(row["patient_id"], split) != split:
                raise ValueError(f"{path}: patient {row['patient_id']} is in two splits")
    return split_of


def splits_table(records: Iterable[Record], split_of: dict[str, Split]) -> str:
    """The text of ``splits.csv``: one row per kept image; an empty view means the source does not say."""
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(SPLITS_COLUMNS)
    writer.writerows(
        (record.filename, record.patient_id, record.view or "", split_of[record.filename], record.source)
        for record in records
    )
    return table.getvalue()


def split_counts(records: Iterable[Record], split_of: dict[str, Split]) -> dict[str, dict[str, int]]:
    """``{split: {"images": n, "patients": n}}``."""
    records = list(records)
    counts = {}
    for split in SPLITS:
        chosen = [record for record in records if split_of[record.filename] == split]
        counts[split] = {"images": len(chosen), "patients": len({record.patient_id for record in chosen})}
    return counts


# splits.csv's columns but "source", which a set written before sources were recorded lacks.
REQUIRED_COLUMNS = SPLITS_COLUMNS[:4]


@dataclass(frozen=True)
class SplitRow:
    filename: str
    patient_id: str
    view: str
    split: Split
    source: str = ""  # the prepare source it came from; "" in a set written before sources were recorded


def read_splits(root: Path) -> list[SplitRow]:
    path = Path(root) / "splits.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: write the data folder with `xraysr prepare`")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks columns {missing}; expected {list(REQUIRED_COLUMNS)}")
        rows: list[SplitRow] = []
        for line, record in enumerate(reader, start=2):
            if record["split"] not in get_args(Split):
                raise ValueError(f"{path} line {line}: split {record['split']!r} is not one of {get_args(Split)}")
            split = cast(Split, record["split"])  # checked just above
            source = record.get("source") or ""
            rows.append(SplitRow(record["filename"], record["patient_id"], record["view"], split, source))
    seen: set[str] = set()
    for row in rows:
        if row.filename in seen:
            raise ValueError(f"{path}: {row.filename} is listed more than once")
        seen.add(row.filename)
    return rows
