"""The metadata `xraysr prepare` reads: NIH's ``Data_Entry_2017.csv`` and a folder's ``manifest.csv``."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

# The first 7 names of the NIH header; the last two hold unquoted commas (see read_nih_metadata).
NIH_COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)


@dataclass(frozen=True)
class ImageMeta:
    filename: str
    patient_id: str
    view: str | None  # None: the source does not say
    source: str = ""  # the name of the input it came from (prepare's Source.name)


def read_nih_metadata(path: Path) -> dict[str, ImageMeta]:
    """Read NIH ``Data_Entry_2017.csv`` into ``{image filename: ImageMeta}``.

    Its header ends with ``OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]``: unquoted commas, so
    the header splits into 11 names that match the 11 fields of a row only by position. The columns used here
    come first, so once the header is checked to start with ``NIH_COLUMNS``, fields are read by position.
    """
    image, patient, view = map(NIH_COLUMNS.index, ("Image Index", "Patient ID", "View Position"))
    records: dict[str, ImageMeta] = {}
    with open(path, newline="", encoding="utf-8-sig") as file:
        rows = csv.reader(file)
        header = tuple(name.strip() for name in next(rows, []))
        if header[: len(NIH_COLUMNS)] != NIH_COLUMNS:
            raise ValueError(f"{path} does not start with the NIH header {','.join(NIH_COLUMNS)}: {header}")
        for row in rows:
            if not row:
                continue  # a blank line
            if len(row) < len(NIH_COLUMNS):
                raise ValueError(f"{path}:{rows.line_num}: {len(row)} fields, expected {len(NIH_COLUMNS)}+")
            meta = ImageMeta(row[image].strip(), row[patient].strip(), row[view].strip())
            _add_record(records, meta, f"{path}:{rows.line_num}")
    return records


def read_manifest(path: Path) -> dict[str, ImageMeta]:
    """Read a manifest CSV into ``{filename: ImageMeta}``: columns ``filename``, ``patient_id``, ``view``.

    Other columns are ignored. An empty ``view`` means unknown; such an image never passes a view filter.
    """
    records: dict[str, ImageMeta] = {}
    with open(path, newline="", encoding="utf-8-sig") as file:
        rows = csv.DictReader(file)
        missing = {"filename", "patient_id", "view"} - set(rows.fieldnames or ())
        if missing:
            raise ValueError(f"{path} lacks the columns {sorted(missing)}")
        for row in rows:
            meta = ImageMeta(row["filename"].strip(), row["patient_id"].strip(), row["view"].strip() or None)
            _add_record(records, meta, f"{path}:{rows.line_num}")
    return records


def _add_record(records: dict[str, ImageMeta], meta: ImageMeta, where: str) -> None:
    if not meta.filename or not meta.patient_id:
        raise ValueError(f"{where}: empty filename or patient id")
    if meta.filename in records:
        raise ValueError(f"{where}: {meta.filename} is listed twice")
    records[meta.filename] = meta
