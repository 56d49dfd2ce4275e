"""`xraysr prepare`: a folder of chest X-rays → paired HR/LR training data with a split by patient.

Inputs: ``nih``, the NIH ChestX-ray14 release (PNGs plus ``Data_Entry_2017.csv`` given as ``metadata``), or
``folder``, any folder of PNG/JPEG X-rays with an optional manifest (``filename``, ``patient_id``, ``view``;
other columns ignored) given as ``manifest`` or found as ``images_dir/manifest.csv``. Without a manifest a
file is its own patient (its stem), its view is unknown and the view filter is not applied (the report says
so). The image folder is the source of truth: metadata rows without a file are ignored; files without a row
are dropped as ``no_metadata``. If ``images_dir`` has no images itself but an ``HR_256/`` subfolder (a set
written by this command, like shared/data/cxr), the images are read from ``HR_256/``.

Several such inputs (``Source``s: NIH, a COVID figure set, a pediatric set…) can go into one prepared set,
split by patient across all of them, each image keeping the name of its source.

Outputs in ``out_dir``: ``HR_<hr_size>/<stem>.png`` and ``LR_<lr_size>/<stem>.png`` (8-bit grayscale, same
names), ``splits.csv`` (``filename,patient_id,view,split,source``; kept images; empty view when unknown) and
``prepare_report.json`` (a ``PrepareReport``, with per-source counts).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from xraysr.training.prepare_images import (
    MAX_ASPECT_RATIO,
    DroppedImage,
    center_square,
    check_shape,
    load_grayscale,
)
from xraysr.training.prepare_metadata import NIH_COLUMNS, ImageMeta, read_manifest, read_nih_metadata
from xraysr.training.prepare_pairs import CV2_INTERPOLATION, Interpolation, PairTask, run_tasks, write_atomically
from xraysr.training.splits import SPLITS, read_patient_splits, split_by_patient, split_counts, splits_table

__all__ = [
    "MAX_ASPECT_RATIO",
    "DroppedImage",
    "center_square",
    "check_shape",
    "load_grayscale",
    "NIH_COLUMNS",
    "SPLITS",
    "ImageMeta",
    "Source",
    "prepare",
    "prepare_sources",
    "read_manifest",
    "read_nih_metadata",
    "split_by_patient",
]
logger = logging.getLogger(__name__)

DROP_REASONS = ("no_metadata", "unreadable", "colour", "blank", "too_small", "not_squareable")
CONVERSIONS = ("16bit", "rgb")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class PrepareOptions:
    views: tuple[str, ...] | None  # None: every view kept
    view_filter_applied: bool  # False when views is None or a source has no view metadata (all its views kept)
    seed: int
    hr_size: int
    lr_size: int
    hr_interpolation: Interpolation
    lr_interpolation: Literal["cubic"] = "cubic"
    split_fractions: tuple[float, float, float] = (0.7, 0.2, 0.1)  # of patients; see split_by_patient


@dataclass
class PrepareCounts:
    kept: int  # images in splits.csv, skipped_existing included
    dropped: dict[str, int]  # every reason of DROP_REASONS, zeros included
    converted: dict[str, int]  # images converted in this run (skipped ones are not read again)
    view_filtered: int
    skipped_existing: int  # HR and LR both present from an earlier run


@dataclass
class SourceReport:
    name: str
    input_kind: Literal["nih", "folder"]
    images_dir: str  # where the images were read: HR_256/ when that rule applied
    metadata: str | None  # the NIH CSV or manifest that was read
    counts: PrepareCounts
    splits: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # {split: {"images", "patients"}}


@dataclass
class PrepareReport:
    input_kind: Literal["nih", "folder", "sources"]  # "sources": several, each described in `sources`
    images_dir: str | None  # the single source's; None for several
    metadata: str | None  # the single source's NIH CSV or manifest; None for several
    out_dir: str
    options: PrepareOptions
    counts: PrepareCounts  # summed over the sources
    splits: dict[str, dict[str, int]]  # {split: {"images": n, "patients": n}}, over all sources
    sources: list[SourceReport]
    elapsed_seconds: float

    def to_dict(self) -> dict[str, object]:
        """The JSON of ``prepare_report.json``."""
        return dataclasses.asdict(self)


def _find_images(images_dir: Path) -> tuple[Path, list[Path]]:
    def images_in(folder: Path) -> list[Path]:
        paths = (path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))
        return sorted(path for path in paths if path.suffix.lower() in IMAGE_SUFFIXES)

    found = images_in(images_dir)
    if not found and (images_dir / "HR_256").is_dir():
        images_dir = images_dir / "HR_256"
        found = images_in(images_dir)
    if not found:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {images_dir}")
    clashes = sorted(stem for stem, count in Counter(path.stem for path in found).items() if count > 1)
    if clashes:
        raise ValueError(f"files in {images_dir} share a stem, so their outputs would clash: {clashes[:5]}")
    return images_dir, found


def _refuse_other_options(report_path: Path, options: PrepareOptions) -> None:
    # Skipped outputs are not recomputed, so a rerun with another interpolation would silently mix two.
    if not report_path.is_file():
        return
    earlier = json.loads(report_path.read_text())["options"]
    for name in ("hr_size", "lr_size", "hr_interpolation"):
        if earlier[name] != getattr(options, name):
            raise ValueError(
                f"{report_path.parent} was prepared with {name}={earlier[name]!r}, "
                f"not {getattr(options, name)!r}; use a new out_dir"
            )


@dataclass(frozen=True)
class Source:
    """One input of `prepare_sources`: a folder of X-rays and the file that describes it."""

    name: str  # kept in splits.csv's source column, so every evaluation can be reported per source
    images_dir: Path
    metadata: Path | None = None  # NIH Data_Entry_2017.csv
    manifest: Path | None = None  # a folder's CSV; default images_dir/manifest.csv when it exists


@dataclass
class _Plan:
    """One source matched to its metadata: what is kept already, what is still to do, what was set aside."""

    source: Source
    report: SourceReport
    kept: list[ImageMeta]
    pending: list[ImageMeta]
    tasks: list[PairTask]


def prepare(
    images_dir: Path,
    out_dir: Path,
    *,
    metadata: Path | None = None,
    manifest: Path | None = None,
    **options: Any,
) -> PrepareReport:
    """`prepare_sources` of one source named after its folder; the keyword options are the same."""
    return prepare_sources([Source(images_dir.name, images_dir, metadata, manifest)], out_dir, **options)


def prepare_sources(
    sources: Sequence[Source],
    out_dir: Path,
    *,
    views: Sequence[str] | None = ("PA",),
    seed: int = 0,
    workers: int | None = None,
    hr_interpolation: Interpolation = "area",
    hr_size: int = 256,
    lr_size: int = 64,
    show_progress: bool = True,
    keep_splits: Path | None = None,
) -> PrepareReport:
    """Write HR/LR pairs, ``splits.csv`` and ``prepare_report.json`` for the images of every source.

    ``views`` keeps images whose view is exactly one of these strings: ``("PA", "AP")`` widens, and
    shared/data/cxr also has ``"AP Supine"``; None keeps every view. ``hr_interpolation="area"``
    (cv2.INTER_AREA) averages the source pixels under each output pixel: an antialiased downscale, as
    shared/data/cxr was made. Cubic and Lanczos sample the source sparsely on a 4x downscale (1024 -> 256)
    and alias fine texture such as rib edges and noise into the targets. The LR is always cv2.INTER_CUBIC
    of the HR, like shared/data/cxr; other degradations are made from the HR when training and evaluating.

    Several sources go into one set: the split is by patient across all of them (`splits.split_by_patient`,
    stratified by source), each row keeps its source, and two sources writing the same file name is an error.
``keep_splits`` (an earlier set's splits.csv) keeps every patient it lists in that split, so a source added to a
set never moves an image a trained model saw into validation or test.

    Runs ``workers`` processes (default ``os.cpu_count()``). Resumable: an image whose HR and LR both exist
    is not redone (``skipped_existing``) but still goes into ``splits.csv``; a rerun must keep the sizes and
    interpolation. Outputs of images no longer selected stay on disk; ``splits.csv`` is the index.
    """
    started = time.perf_counter()
    # 1. check the arguments
    if not sources:
        raise ValueError("no source given")
    names = [source.name for source in sources]
    if len(set(names)) < len(names) or not all(names):
        raise ValueError(f"source names must be unique and non-empty, got {names}")
    if not 0 < lr_size < hr_size:
        raise ValueError(f"need 0 < lr_size < hr_size, got lr_size={lr_size}, hr_size={hr_size}")
    if views is not None and not views:
        raise ValueError("views is empty: no image could be kept")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if hr_interpolation not in CV2_INTERPOLATION:
        raise ValueError(f"hr_interpolation must be area, cubic or lanczos, not {hr_interpolation!r}")
    hr_dir, lr_dir = out_dir / f"HR_{hr_size}", out_dir / f"LR_{lr_size}"

    # 2. per source: read its metadata, match files, filter by view, set aside pairs an earlier run finished
    plans = [_plan(source, views, hr_dir, lr_dir, hr_size, lr_size, hr_interpolation) for source in sources]
    _refuse_clashes(plans)
    options = PrepareOptions(
        tuple(views) if views is not None else None,
        views is not None and all(plan.report.metadata is not None for plan in plans),
        seed,
        hr_size,
        lr_size,
        hr_interpolation,
    )
    _refuse_other_options(out_dir / "prepare_report.json", options)
    hr_dir.mkdir(parents=True, exist_ok=True)
    lr_dir.mkdir(parents=True, exist_ok=True)

    # 3. process what is left of every source in one pool
    tasks = [task for plan in plans for task in plan.tasks]
    outcomes = iter(run_tasks(tasks, workers or os.cpu_count() or 1, show_progress))
    for plan in plans:
        counts = plan.report.counts
        for output, (reason, conversion) in zip(plan.pending, outcomes, strict=False):
            if reason is not None:
                counts.dropped[reason] += 1
                continue
            plan.kept.append(output)
            if conversion is not None:
                counts.converted[conversion] += 1
        counts.kept = len(plan.kept)

    # 4. split by patient across every source, write the index and the report
    kept = sorted((meta for plan in plans for meta in plan.kept), key=lambda meta: meta.filename)
    kept_patients = read_patient_splits(keep_splits) if keep_splits is not None else None
    split_of = split_by_patient(kept, seed, options.split_fractions, kept_patients)
    for plan in plans:
        plan.report.splits = split_counts(plan.kept, split_of)
    text = splits_table(kept, split_of)
    write_atomically(out_dir / "splits.csv", lambda temporary: temporary.write_text(text))
    single = plans[0].report if len(plans) == 1 else None
    report = PrepareReport(
        input_kind=single.input_kind if single else "sources",
        images_dir=single.images_dir if single else None,
        metadata=single.metadata if single else None,
        out_dir=str(out_dir),
        options=options,
        counts=_total(plan.report.counts for plan in plans),
        splits=split_counts(kept, split_of),
        sources=[plan.report for plan in plans],
        elapsed_seconds=round(time.perf_counter() - started, 3),
    )
    text = json.dumps(report.to_dict(), indent=2) + "\n"
    write_atomically(out_dir / "prepare_report.json", lambda temporary: temporary.write_text(text))
    logger.info(
        "prepared %d images from %d source(s) into %s (dropped %s, view-filtered %d, skipped %d) in %.1f s",
        report.counts.kept,
        len(plans),
        out_dir,
        {reason: n for reason, n in report.counts.dropped.items() if n},
        report.counts.view_filtered,
        report.counts.skipped_existing,
        report.elapsed_seconds,
    )
    return report


def _plan(
    source: Source,
    views: Sequence[str] | None,
    hr_dir: Path,
    lr_dir: Path,
    hr_size: int,
    lr_size: int,
    hr_interpolation: Interpolation,
) -> _Plan:
    if not source.images_dir.is_dir():
        raise FileNotFoundError(f"images_dir {source.images_dir} is not a folder")
    metadata, manifest = source.metadata, source.manifest
    if metadata is not None and manifest is not None:
        raise ValueError("give metadata (NIH Data_Entry_2017.csv) or manifest (a folder's CSV), not both")
    if metadata is None and manifest is None and (source.images_dir / "manifest.csv").is_file():
        manifest = source.images_dir / "manifest.csv"
    records: dict[str, ImageMeta] | None = None
    if metadata is not None:
        records = read_nih_metadata(metadata)
    elif manifest is not None:
        records = read_manifest(manifest)
    source_dir, image_paths = _find_images(source.images_dir)
    counts = PrepareCounts(0, dict.fromkeys(DROP_REASONS, 0), dict.fromkeys(CONVERSIONS, 0), 0, 0)
    plan = _Plan(
        source,
        SourceReport(
            name=source.name,
            input_kind="nih" if metadata is not None else "folder",
            images_dir=str(source_dir),
            metadata=str(metadata or manifest) if records is not None else None,
            counts=counts,
        ),
        kept=[],
        pending=[],
        tasks=[],
    )
    for path in image_paths:
        meta = ImageMeta(path.name, path.stem, None) if records is None else records.get(path.name)
        if meta is None:
            counts.dropped["no_metadata"] += 1
        elif records is not None and views is not None and meta.view not in views:
            counts.view_filtered += 1
        else:
            output = dataclasses.replace(meta, filename=f"{path.stem}.png", source=source.name)
            hr_path, lr_path = hr_dir / output.filename, lr_dir / output.filename
            if hr_path.is_file() and lr_path.is_file():
                counts.skipped_existing += 1
                plan.kept.append(output)
            else:
                plan.pending.append(output)
                plan.tasks.append(PairTask(path, hr_path, lr_path, hr_size, lr_size, hr_interpolation))
    return plan


def _refuse_clashes(plans: list[_Plan]) -> None:
    owner: dict[str, str] = {}
    for plan in plans:
        for meta in (*plan.kept, *plan.pending):
            if meta.filename in owner:
                raise ValueError(
                    f"sources {owner[meta.filename]} and {plan.source.name} both have {meta.filename}; "
                    "their outputs would overwrite each other"
                )
            owner[meta.filename] = plan.source.name


def _total(all_counts: Iterable[PrepareCounts]) -> PrepareCounts:
    total = PrepareCounts(0, dict.fromkeys(DROP_REASONS, 0), dict.fromkeys(CONVERSIONS, 0), 0, 0)
    for counts in all_counts:
        total.kept += counts.kept
        total.view_filtered += counts.view_filtered
        total.skipped_existing += counts.skipped_existing
        for reason, count in counts.dropped.items():
            total.dropped[reason] += count
        for conversion, count in counts.converted.items():
            total.converted[conversion] += count
    return total
