"""`xraysr prepare`: a folder of chest X-rays → paired HR/LR training data with a split by patient.

Inputs: ``nih``, the NIH ChestX-ray14 release (PNGs plus ``Data_Entry_2017.csv`` given as ``metadata``), or
``folder``, any folder of PNG/JPEG X-rays with an optional manifest (``filename``, ``patient_id``, ``view``;
other columns ignored) given as ``manifest`` or found as ``images_dir/manifest.csv``. Without a manifest a
file is its own patient (its stem), its view is unknown and the view filter is not applied (the report says
so). The image folder is the source of truth: metadata rows without a file are ignored; files without a row
are dropped as ``no_metadata``. If ``images_dir`` has no images itself but an ``HR_256/`` subfolder (a set
written by this command, like shared/data/cxr), the images are read from ``HR_256/``.

Outputs in ``out_dir``: ``HR_<hr_size>/<stem>.png`` and ``LR_<lr_size>/<stem>.png`` (8-bit grayscale, same
names), ``splits.csv`` (``filename,patient_id,view,split``; kept images; empty view when unknown) and
``prepare_report.json`` (a ``PrepareReport``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from training.config import Split

logger = logging.getLogger(__name__)

Interpolation = Literal["area", "cubic", "lanczos"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
DROP_REASONS = ("no_metadata", "unreadable", "colour", "blank", "too_small", "not_squareable")
CONVERSIONS = ("16bit", "rgb")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CV2_INTERPOLATION = {"area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}
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

MIN_STD = 2.0  # on [0, 255]: below this an image is blank (a failed export, an empty frame)
MAX_CHANNEL_DIFFERENCE = 2.0  # mean |R-G|, |G-B|, |B-R| on [0, 255]: above this it is a colour picture
MAX_ASPECT_RATIO = 1.5  # long/short: beyond this the centre square cuts away too much of the chest


@dataclass(frozen=True)
class ImageMeta:
    filename: str
    patient_id: str
    view: str | None  # None: the source does not say


class DroppedImage(Exception):
    """An image that fails a quality check; ``reason`` is one of ``DROP_REASONS``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class PrepareOptions:
    views: tuple[str, ...]
    view_filter_applied: bool  # False when the input has no view metadata: every view was kept
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
class PrepareReport:
    input_kind: Literal["nih", "folder"]
    images_dir: str  # where the images were read: HR_256/ when that rule applied
    metadata: str | None  # the NIH CSV or manifest that was read
    out_dir: str
    options: PrepareOptions
    counts: PrepareCounts
    splits: dict[str, dict[str, int]]  # {split: {"images": n, "patients": n}}
    elapsed_seconds: float

    def to_dict(self) -> dict[str, object]:
        """The JSON of ``prepare_report.json``."""
        return dataclasses.asdict(self)


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


def load_grayscale(path: Path) -> tuple[np.ndarray, str | None]:
    """Decode an X-ray into an 8-bit grayscale array with range [0, 255], EXIF orientation applied.

    Returns the array and its conversion: None (8-bit grayscale already), ``"16bit"`` (high bit depth, min-max
    rescaled) or ``"rgb"`` (a colour-model or alpha image that is really grayscale: alpha composited on black,
    then ITU-R 601 luma, Pillow's ``convert("L")``). Raises ``DroppedImage``: unreadable, colour or blank.
    """
    try:
        with Image.open(path) as opened:
            opened.load()  # decode every byte now, so a truncated file fails here
            image = ImageOps.exif_transpose(opened)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DroppedImage("unreadable", f"{path.name}: {error}") from error
    conversion: str | None = None
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels, conversion = _rescale_to_8bit(np.asarray(image)), "16bit"
    elif image.mode in ("L", "1"):
        pixels = np.asarray(image.convert("L"))
    else:
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        rgb = image.convert("RGB")
        channels = np.asarray(rgb, dtype=np.int16)
        difference = np.abs(channels - np.roll(channels, 1, axis=-1)).mean()  # |R-B|, |G-R|, |B-G|
        if difference > MAX_CHANNEL_DIFFERENCE:
            raise DroppedImage("colour", f"{path.name}: mean inter-channel difference {difference:.2f}")
        pixels, conversion = np.asarray(rgb.convert("L")), "rgb"
    if pixels.std() < MIN_STD:
        raise DroppedImage("blank", f"{path.name}: std {pixels.std():.2f}")
    return pixels, conversion


def _rescale_to_8bit(pixels: np.ndarray) -> np.ndarray:
    # Min-max, not a fixed >> 8: 12-bit data stored in 16 bits would otherwise fill a sixteenth of the range.
    low, high = float(pixels.min()), float(pixels.max())
    if high == low:
        return np.zeros(pixels.shape, dtype=np.uint8)
    return np.round((pixels.astype(np.float64) - low) * (255.0 / (high - low))).astype(np.uint8)


def check_shape(height: int, width: int, hr_size: int) -> None:
    """Raise ``DroppedImage`` for ``too_small`` (a target is never upsampled) or ``not_squareable``."""
    short, long = sorted((height, width))
    if short < hr_size:
        raise DroppedImage("too_small", f"{width}x{height}, short side under {hr_size}")
    if long / short > MAX_ASPECT_RATIO:
        raise DroppedImage("not_squareable", f"{width}x{height}, aspect ratio over {MAX_ASPECT_RATIO}")


def center_square(pixels: np.ndarray) -> np.ndarray:
    """The largest centred square: the longer side loses equal margins (an odd pixel from its far end)."""
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return pixels[top : top + side, left : left + side]


def split_by_patient(
    records: Iterable[ImageMeta], seed: int, fractions: tuple[float, float, float] = (0.7, 0.2, 0.1)
) -> dict[str, Split]:
    """Assign each image to train/val/test with no patient in two splits; returns ``{filename: split}``.

    The rule counts patients, not images: the P sorted unique patient ids are shuffled with
    ``random.Random(seed)``; the first ``round(f_train * P)`` go to train, those up to
    ``round((f_train + f_val) * P)`` to val, the rest to test, so image shares match on average.
    With 3 or more patients every split gets at least one.
    """
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three positive numbers summing to 1, not {fractions}")
    records = list(records)
    patients = sorted({record.patient_id for record in records})
    random.Random(seed).shuffle(patients)
    count = len(patients)
    train_end, val_end = round(fractions[0] * count), round((fractions[0] + fractions[1]) * count)
    if count >= 3:
        train_end = min(max(train_end, 1), count - 2)
        val_end = min(max(val_end, train_end + 1), count - 1)
    split_of_patient: dict[str, Split] = {}
    for index, patient in enumerate(patients):
        split_of_patient[patient] = "train" if index < train_end else "val" if index < val_end else "test"
    return {record.filename: split_of_patient[record.patient_id] for record in records}


@dataclass(frozen=True)
class _Task:
    source: Path
    hr_path: Path
    lr_path: Path
    hr_size: int
    lr_size: int
    hr_interpolation: Interpolation


def _prepare_one(task: _Task) -> tuple[str | None, str | None]:
    """One image, in a worker (top level, so the pool can pickle it). Returns (drop reason, conversion)."""
    # 1. decode to 8-bit grayscale and check quality: unreadable, colour, blank, too_small, not_squareable
    try:
        pixels, conversion = load_grayscale(task.source)
        check_shape(pixels.shape[0], pixels.shape[1], task.hr_size)
    except DroppedImage as dropped:
        logger.debug("dropped %s", dropped)
        return dropped.reason, None
    # 2. HR: the centre square resized to hr_size; LR: bicubic of the HR, as shared/data/cxr was made
    hr = cv2.resize(
        np.ascontiguousarray(center_square(pixels)),
        (task.hr_size, task.hr_size),
        interpolation=CV2_INTERPOLATION[task.hr_interpolation],
    )
    lr = cv2.resize(hr, (task.lr_size, task.lr_size), interpolation=cv2.INTER_CUBIC)
    # 3. HR then LR, each renamed into place whole. A pair counts as finished only when both exist, so an
    #    interrupted run leaves at worst an HR without its LR, which the next run redoes.
    _write_atomically(task.hr_path, lambda temporary: Image.fromarray(hr).save(temporary, format="PNG"))
    _write_atomically(task.lr_path, lambda temporary: Image.fromarray(lr).save(temporary, format="PNG"))
    return None, conversion


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    # Same folder as the target, so os.replace is a rename: a reader sees the old file or the new, never half.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(temporary)
    os.replace(temporary, path)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # the pool already fills the cores; OpenCV's own threads would oversubscribe them


def _run_tasks(tasks: list[_Task], workers: int, show_progress: bool) -> list[tuple[str | None, str | None]]:
    workers = min(workers, max(len(tasks), 1))
    # One worker runs in-process: no pool start-up, and a debugger can step into _prepare_one.
    with ProcessPoolExecutor(workers, initializer=_init_worker) if workers > 1 else nullcontext() as pool:
        chunksize = max(1, min(64, len(tasks) // (workers * 8)))
        outcomes = pool.map(_prepare_one, tasks, chunksize=chunksize) if pool else map(_prepare_one, tasks)
        return list(tqdm(outcomes, total=len(tasks), desc="prepare", unit="image", disable=not show_progress))


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


def _write_splits(path: Path, kept: list[ImageMeta], split_of: dict[str, Split]) -> None:
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(("filename", "patient_id", "view", "split"))
    writer.writerows((meta.filename, meta.patient_id, meta.view or "", split_of[meta.filename]) for meta in kept)
    _write_atomically(path, lambda temporary: temporary.write_text(table.getvalue()))


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


def prepare(
    images_dir: Path,
    out_dir: Path,
    *,
    metadata: Path | None = None,
    manifest: Path | None = None,
    views: Sequence[str] = ("PA",),
    seed: int = 0,
    workers: int | None = None,
    hr_interpolation: Interpolation = "area",
    hr_size: int = 256,
    lr_size: int = 64,
    show_progress: bool = True,
) -> PrepareReport:
    """Write HR/LR pairs, ``splits.csv`` and ``prepare_report.json`` for the images in ``images_dir``.

    ``views`` keeps images whose view is exactly one of these strings: ``("PA", "AP")`` widens, and
    shared/data/cxr also has ``"AP Supine"``. ``hr_interpolation="area"`` (cv2.INTER_AREA) averages the
    source pixels under each output pixel: an antialiased downscale, as shared/data/cxr was made. Cubic and
    Lanczos sample the source sparsely on a 4x downscale (1024 -> 256) and alias fine texture such as rib
    edges and noise into the targets. The LR is always cv2.INTER_CUBIC of the HR, like shared/data/cxr.

    Runs ``workers`` processes (default ``os.cpu_count()``). Resumable: an image whose HR and LR both exist
    is not redone (``skipped_existing``) but still goes into ``splits.csv``; a rerun must keep the sizes and
    interpolation. Outputs of images no longer selected stay on disk; ``splits.csv`` is the index.
    """
    started = time.perf_counter()
    # 1. check the arguments and read the metadata
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images_dir {images_dir} is not a folder")
    if metadata is not None and manifest is not None:
        raise ValueError("give metadata (NIH Data_Entry_2017.csv) or manifest (a folder's CSV), not both")
    if not 0 < lr_size < hr_size:
        raise ValueError(f"need 0 < lr_size < hr_size, got lr_size={lr_size}, hr_size={hr_size}")
    if not views:
        raise ValueError("views is empty: no image could be kept")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if hr_interpolation not in CV2_INTERPOLATION:
        raise ValueError(f"hr_interpolation must be area, cubic or lanczos, not {hr_interpolation!r}")
    if metadata is None and manifest is None and (images_dir / "manifest.csv").is_file():
        manifest = images_dir / "manifest.csv"
    records: dict[str, ImageMeta] | None = None
    if metadata is not None:
        records = read_nih_metadata(metadata)
    elif manifest is not None:
        records = read_manifest(manifest)
    source_dir, image_paths = _find_images(images_dir)
    options = PrepareOptions(tuple(views), records is not None, seed, hr_size, lr_size, hr_interpolation)
    _refuse_other_options(out_dir / "prepare_report.json", options)

    # 2. match files to metadata, filter by view, and set aside pairs finished by an earlier run
    hr_dir, lr_dir = out_dir / f"HR_{hr_size}", out_dir / f"LR_{lr_size}"
    hr_dir.mkdir(parents=True, exist_ok=True)
    lr_dir.mkdir(parents=True, exist_ok=True)
    dropped, converted = dict.fromkeys(DROP_REASONS, 0), dict.fromkeys(CONVERSIONS, 0)
    view_filtered = skipped_existing = 0
    kept: list[ImageMeta] = []
    pending: list[ImageMeta] = []
    tasks: list[_Task] = []
    for path in image_paths:
        meta = ImageMeta(path.name, path.stem, None) if records is None else records.get(path.name)
        if meta is None:
            dropped["no_metadata"] += 1
        elif records is not None and meta.view not in views:
            view_filtered += 1
        else:
            output = dataclasses.replace(meta, filename=f"{path.stem}.png")
            hr_path, lr_path = hr_dir / output.filename, lr_dir / output.filename
            if hr_path.is_file() and lr_path.is_file():
                skipped_existing += 1
                kept.append(output)
            else:
                pending.append(output)
                tasks.append(_Task(path, hr_path, lr_path, hr_size, lr_size, hr_interpolation))

    # 3. process the rest in parallel
    outcomes = _run_tasks(tasks, workers or os.cpu_count() or 1, show_progress)
    for output, (reason, conversion) in zip(pending, outcomes, strict=True):
        if reason is not None:
            dropped[reason] += 1
            continue
        kept.append(output)
        if conversion is not None:
            converted[conversion] += 1

    # 4. split by patient, write the index and the report
    kept.sort(key=lambda meta: meta.filename)
    split_of = split_by_patient(kept, seed, options.split_fractions)
    _write_splits(out_dir / "splits.csv", kept, split_of)
    in_split = {split: [meta for meta in kept if split_of[meta.filename] == split] for split in SPLITS}
    report = PrepareReport(
        input_kind="nih" if metadata is not None else "folder",
        images_dir=str(source_dir),
        metadata=str(metadata or manifest) if records is not None else None,
        out_dir=str(out_dir),
        options=options,
        counts=PrepareCounts(len(kept), dropped, converted, view_filtered, skipped_existing),
        splits={
            split: {"images": len(metas), "patients": len({meta.patient_id for meta in metas})}
            for split, metas in in_split.items()
        },
        elapsed_seconds=round(time.perf_counter() - started, 3),
    )
    text = json.dumps(report.to_dict(), indent=2) + "\n"
    _write_atomically(out_dir / "prepare_report.json", lambda temporary: temporary.write_text(text))
    logger.info(
        "prepared %d images into %s (dropped %s, view-filtered %d, skipped %d) in %.1f s",
        len(kept),
        out_dir,
        {reason: n for reason, n in dropped.items() if n},
        view_filtered,
        skipped_existing,
        report.elapsed_seconds,
    )
    return report
