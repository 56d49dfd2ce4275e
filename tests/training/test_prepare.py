"""`xraysr prepare` on the real NIH sample, a slice of shared/data/cxr, and small broken files."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from xraysr.training.prepare import (
    DROP_REASONS,
    DroppedImage,
    ImageMeta,
    Source,
    center_square,
    load_grayscale,
    prepare,
    prepare_sources,
    read_manifest,
    read_nih_metadata,
    split_by_patient,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
NO_DROPS = dict.fromkeys(DROP_REASONS, 0)


@pytest.fixture(scope="module")
def shared_data() -> Path:
    if not (SHARED_DATA / "nih_sample").is_dir() or not (SHARED_DATA / "cxr").is_dir():
        pytest.skip(f"needs ../shared/data: the raw NIH sample and metadata (not found at {SHARED_DATA})")
    return SHARED_DATA


@pytest.fixture(scope="module")
def nih_csv(shared_data: Path) -> Path:
    return shared_data / "nih_metadata" / "Data_Entry_2017.csv"


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


def read_splits(out_dir: Path, with_source: bool = False) -> list[dict[str, str]]:
    """The rows of splits.csv; without ``with_source`` the source column is checked to be one name and dropped."""
    with open(out_dir / "splits.csv", newline="") as file:
        rows = csv.DictReader(file)
        assert rows.fieldnames == ["filename", "patient_id", "view", "split", "source"]
        records = list(rows)
    if with_source:
        return records
    assert len({record.pop("source") for record in records}) <= 1
    return records


def output_bytes(out_dir: Path) -> dict[str, bytes]:
    return {str(path.relative_to(out_dir)): path.read_bytes()
            for path in sorted(out_dir.rglob("*")) if path.is_file() and path.name != "prepare_report.json"}


# --- metadata -------------------------------------------------------------------------------------------

def test_read_nih_metadata_reads_the_real_header(nih_csv: Path) -> None:
    records = read_nih_metadata(nih_csv)
    assert len(records) == 40_000  # the truncated copy; its last line has no newline
    # Values as grepped from the CSV: 00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143
    assert records["00000001_000.png"] == ImageMeta("00000001_000.png", "1", "PA")
    assert records["00000002_000.png"] == ImageMeta("00000002_000.png", "2", "PA")
    assert records["00000013_003.png"] == ImageMeta("00000013_003.png", "13", "AP")
    assert Counter(meta.view for meta in records.values()) == {"PA": 24_089, "AP": 15_911}
    assert len({meta.patient_id for meta in records.values()}) == 10_447


def test_read_nih_metadata_refuses_another_header(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("filename,patient_id,view\na.png,1,PA\n")
    with pytest.raises(ValueError, match="NIH header"):
        read_nih_metadata(path)


def test_read_manifest_ignores_extra_columns_and_keeps_unknown_view(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    path.write_text("filename,source,patient_id,view\na.png,\"x, y\",p1,PA\nb.png,z,p2,\n")
    assert read_manifest(path) == {"a.png": ImageMeta("a.png", "p1", "PA"),
                                   "b.png": ImageMeta("b.png", "p2", None)}
    path.write_text("filename,view\na.png,PA\n")
    with pytest.raises(ValueError, match="patient_id"):
        read_manifest(path)


# --- prepare on the real NIH sample ---------------------------------------------------------------------

# nih_sample/README.md: 6 PA images of patients 1, 2, 3 and 13, and 4 AP images of patients 13 and 32.
NIH_PA = ["00000001_000.png", "00000002_000.png", "00000003_000.png", "00000013_019.png", "00000013_021.png",
          "00000013_035.png"]
NIH_AP = ["00000013_003.png", "00000013_004.png", "00000013_018.png", "00000032_015.png"]


def patients_per_split(rows: list[dict[str, str]]) -> dict[str, int]:
    """Patients in each split, after checking that no patient is in two."""
    split_of: dict[str, set[str]] = {}
    for row in rows:
        split_of.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in split_of.values()), split_of
    return dict(Counter(next(iter(splits)) for splits in split_of.values()))


def test_prepare_nih_keeps_pa_only_by_default(shared_data: Path, nih_csv: Path, tmp_path: Path) -> None:
    report = prepare(shared_data / "nih_sample", tmp_path, metadata=nih_csv, workers=2, show_progress=False)

    assert report.input_kind == "nih"
    assert report.counts.kept == len(NIH_PA)
    assert report.counts.view_filtered == len(NIH_AP)
    assert report.counts.dropped == NO_DROPS
    assert report.counts.converted == {"16bit": 0, "rgb": 0}
    assert report.counts.skipped_existing == 0
    rows = read_splits(tmp_path)
    assert [row["filename"] for row in rows] == NIH_PA
    assert {row["view"] for row in rows} == {"PA"}
    assert {row["filename"]: row["patient_id"] for row in rows}["00000013_021.png"] == "13"
    # Four patients, cut at round(0.7 * 4) = 3, then held to leave val and test one patient each.
    assert patients_per_split(rows) == {"train": 2, "val": 1, "test": 1}
    assert sorted(path.name for path in (tmp_path / "HR_256").iterdir()) == NIH_PA
    for name in NIH_PA:
        hr, lr = read_png(tmp_path / "HR_256" / name), read_png(tmp_path / "LR_64" / name)
        assert hr.shape == (256, 256) and hr.dtype == np.uint8
        assert lr.shape == (64, 64) and lr.dtype == np.uint8
        original = cv2.imread(str(shared_data / "nih_sample" / name), cv2.IMREAD_GRAYSCALE)  # 1024x1024
        np.testing.assert_array_equal(hr, cv2.resize(original, (256, 256), interpolation=cv2.INTER_AREA))
        np.testing.assert_array_equal(lr, cv2.resize(hr, (64, 64), interpolation=cv2.INTER_CUBIC))

    written = json.loads((tmp_path / "prepare_report.json").read_text())
    assert written["counts"] == {"kept": 6, "dropped": NO_DROPS, "converted": {"16bit": 0, "rgb": 0},
                                 "view_filtered": 4, "skipped_existing": 0}
    assert written["options"]["views"] == ["PA"] and written["options"]["view_filter_applied"] is True
    assert written["options"]["hr_interpolation"] == "area"
    assert sum(written["splits"][split]["images"] for split in ("train", "val", "test")) == 6
    assert {split: counts["patients"] for split, counts in written["splits"].items()} == {
        "train": 2, "val": 1, "test": 1}


def test_prepare_nih_pa_and_ap_fill_every_split(shared_data: Path, nih_csv: Path, tmp_path: Path) -> None:
    report = prepare(shared_data / "nih_sample", tmp_path, metadata=nih_csv, views=("PA", "AP"), workers=1,
                     show_progress=False)

    assert (report.counts.kept, report.counts.view_filtered) == (10, 0)
    rows = read_splits(tmp_path)
    assert [row["filename"] for row in rows] == sorted(NIH_PA + NIH_AP)
    assert {row["filename"] for row in rows if row["view"] == "AP"} == set(NIH_AP)
    # Five patients: round(0.7 * 5) = 4 held to 3 so that val and test get one each.
    assert patients_per_split(rows) == {"train": 3, "val": 1, "test": 1}


def test_rerun_skips_finished_pairs_and_redoes_half_written_ones(
    shared_data: Path, nih_csv: Path, tmp_path: Path
) -> None:
    arguments = dict(metadata=nih_csv, views=("PA", "AP"), workers=1, show_progress=False)
    prepare(shared_data / "nih_sample", tmp_path, **arguments)
    first = output_bytes(tmp_path)

    again = prepare(shared_data / "nih_sample", tmp_path, **arguments)
    assert again.counts.skipped_existing == again.counts.kept == 10
    assert output_bytes(tmp_path) == first

    # An interrupted run can leave an HR without its LR: that pair is not finished, so it is made again.
    (tmp_path / "LR_64" / "00000002_000.png").unlink()
    resumed = prepare(shared_data / "nih_sample", tmp_path, **arguments)
    assert (resumed.counts.kept, resumed.counts.skipped_existing) == (10, 9)
    assert output_bytes(tmp_path) == first

    with pytest.raises(ValueError, match="hr_interpolation='area'"):
        prepare(shared_data / "nih_sample", tmp_path, **{**arguments, "hr_interpolation": "cubic"})


# --- quality drops and conversions ----------------------------------------------------------------------

def noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture()
def awkward_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "awkward"
    folder.mkdir()
    Image.fromarray(noise((300, 300))).save(folder / "good.png")
    encoded = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(encoded[: len(encoded) // 2])
    (folder / "text.png").write_text("not an image")
    Image.fromarray(np.full((300, 300), 128, np.uint8)).save(folder / "blank.png")
    Image.fromarray(noise((300, 300, 3), seed=1), "RGB").save(folder / "colour.png")
    deep = np.random.default_rng(2).integers(1000, 5000, (300, 300), dtype=np.uint16)
    Image.fromarray(deep).save(folder / "deep.png")  # mode I;16
    gray = noise((280, 320), seed=3)
    Image.fromarray(np.dstack([gray, gray, gray, np.full_like(gray, 255)]), "RGBA").save(folder / "rgba.png")
    Image.fromarray(noise((200, 200))).save(folder / "small.png")
    Image.fromarray(noise((300, 900))).save(folder / "wide.png")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return folder


def test_prepare_counts_each_drop_and_conversion(awkward_folder: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    report = prepare(awkward_folder, out_dir, workers=1, show_progress=False)

    assert report.input_kind == "folder" and report.metadata is None
    assert report.options.view_filter_applied is False
    assert report.counts.dropped == {"no_metadata": 0, "unreadable": 2, "colour": 1, "blank": 1,
                                     "too_small": 1, "not_squareable": 1}
    assert report.counts.converted == {"16bit": 1, "rgb": 1}
    assert (report.counts.kept, report.counts.view_filtered) == (3, 0)
    # Without a manifest a file is its own patient and its view is unknown.
    assert [(row["filename"], row["patient_id"], row["view"]) for row in read_splits(out_dir)] == [
        ("deep.png", "deep", ""), ("good.png", "good", ""), ("rgba.png", "rgba", "")]
    # The RGBA image is 320 wide and 280 high: the HR is the centre 280x280 square, area-resized.
    gray = noise((280, 320), seed=3)
    expected = cv2.resize(np.ascontiguousarray(gray[:, 20:300]), (256, 256), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(read_png(out_dir / "HR_256" / "rgba.png"), expected)


def test_load_grayscale_rescales_16bit_and_composites_alpha_on_black(tmp_path: Path) -> None:
    deep = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16).repeat(8, 0).repeat(8, 1)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    pixels, conversion = load_grayscale(tmp_path / "deep.png")
    assert conversion == "16bit" and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[::8, ::8], [[0, 64], [128, 255]])  # (v - 1000) * 255 / 4000

    gray = np.full((16, 16), 200, np.uint8)
    alpha = np.full((16, 16), 255, np.uint8)
    alpha[:, :8] = 0  # transparent half: black once composited
    Image.fromarray(np.dstack([gray, gray, gray, alpha]), "RGBA").save(tmp_path / "rgba.png")
    pixels, conversion = load_grayscale(tmp_path / "rgba.png")
    assert conversion == "rgb"
    assert (pixels[:, :8] == 0).all() and (pixels[:, 8:] == 200).all()


def test_load_grayscale_applies_exif_orientation(tmp_path: Path) -> None:
    pixels = noise((30, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    Image.fromarray(pixels).save(tmp_path / "rotated.png", exif=exif)
    loaded, conversion = load_grayscale(tmp_path / "rotated.png")
    assert conversion is None
    np.testing.assert_array_equal(loaded, np.rot90(pixels, k=-1))


def test_load_grayscale_raises_dropped_image_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DroppedImage) as raised:
        load_grayscale(tmp_path / "text.png")
    assert raised.value.reason == "unreadable"


def test_center_square_cuts_the_long_side_equally() -> None:
    wide = np.arange(3 * 8).reshape(3, 8)
    np.testing.assert_array_equal(center_square(wide), wide[:, 2:5])
    tall = np.arange(6 * 3).reshape(6, 3)
    np.testing.assert_array_equal(center_square(tall), tall[1:4])


# --- input B: a slice of shared/data/cxr with its manifest ----------------------------------------------

@pytest.fixture()
def cxr_slice(shared_data: Path, tmp_path: Path) -> Path:
    """The first 12 manifest rows (3 AP, 9 PA) in HR_256/, and one file the trimmed manifest lacks."""
    folder = tmp_path / "cxr"
    (folder / "HR_256").mkdir(parents=True)
    with open(shared_data / "cxr" / "manifest.csv", newline="") as file:
        lines = file.read().splitlines(keepends=True)
    (folder / "manifest.csv").write_text("".join(lines[:13]))
    names = [row["filename"] for row in csv.DictReader(lines[:14])]
    for name in names:
        shutil.copy(shared_data / "cxr" / "HR_256" / name, folder / "HR_256" / name)
    return folder


def test_prepare_folder_reads_hr_256_and_the_manifest(
    shared_data: Path, cxr_slice: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"
    report = prepare(cxr_slice, out_dir, workers=1, show_progress=False)

    assert report.input_kind == "folder"
    assert report.images_dir == str(cxr_slice / "HR_256")
    assert report.metadata == str(cxr_slice / "manifest.csv")
    assert report.counts.kept == 9
    assert report.counts.view_filtered == 3
    assert report.counts.dropped == {**NO_DROPS, "no_metadata": 1}
    rows = read_splits(out_dir)
    assert {row["view"] for row in rows} == {"PA"}
    assert rows[0] == {"filename": "ieee8023_100_0.png", "patient_id": "ieee8023:100", "view": "PA",
                       "split": rows[0]["split"]}
    # The inputs are 256x256 already, so HR is the input and LR must equal the shared LR_64 exactly.
    for row in rows:
        np.testing.assert_array_equal(read_png(out_dir / "HR_256" / row["filename"]),
                                      read_png(shared_data / "cxr" / "HR_256" / row["filename"]))
        np.testing.assert_array_equal(read_png(out_dir / "LR_64" / row["filename"]),
                                      read_png(shared_data / "cxr" / "LR_64" / row["filename"]))

    wider = prepare(cxr_slice / "HR_256", tmp_path / "wider", manifest=cxr_slice / "manifest.csv",
                    views=("PA", "AP"), workers=1, show_progress=False)
    assert (wider.counts.kept, wider.counts.view_filtered) == (12, 0)


# --- split_by_patient -----------------------------------------------------------------------------------

def test_split_by_patient_on_the_cxr_manifest(shared_data: Path) -> None:
    records = list(read_manifest(shared_data / "cxr" / "manifest.csv").values())
    assert (len(records), len({record.patient_id for record in records})) == (340, 212)
    split_of = split_by_patient(records, seed=0)

    patients_in: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    for record in records:
        patients_in[split_of[record.filename]].add(record.patient_id)
    assert not (patients_in["train"] & patients_in["val"] or patients_in["train"] & patients_in["test"]
                or patients_in["val"] & patients_in["test"])
    # Patients are cut at round(0.7 * 212) = 148 and round(0.9 * 212) = 191.
    patient_counts = {split: len(patients) for split, patients in patients_in.items()}
    assert patient_counts == {"train": 148, "val": 43, "test": 21}
    image_share = {split: count / len(records) for split, count in Counter(split_of.values()).items()}
    assert image_share == pytest.approx({"train": 0.7, "val": 0.2, "test": 0.1}, abs=0.06)

    assert split_by_patient(records, seed=0) == split_of
    assert split_by_patient(reversed(records), seed=0) == split_of  # the input order does not matter
    assert split_by_patient(records, seed=1) != split_of


@pytest.mark.parametrize(("patients", "expected"), [
    (1, {"train": 1}), (2, {"train": 1, "val": 1}), (3, {"train": 1, "val": 1, "test": 1}),
    (4, {"train": 2, "val": 1, "test": 1}), (10, {"train": 7, "val": 2, "test": 1}),
])
def test_split_by_patient_small_counts(patients: int, expected: dict[str, int]) -> None:
    records = [ImageMeta(f"{index}.png", str(index), None) for index in range(patients)]
    assert Counter(split_by_patient(records, seed=0).values()) == expected


def test_split_by_patient_refuses_bad_fractions() -> None:
    with pytest.raises(ValueError, match="fractions"):
        split_by_patient([], seed=0, fractions=(0.8, 0.2, 0.1))


# --- argument errors ------------------------------------------------------------------------------------

def test_prepare_refuses_bad_arguments(shared_data: Path, nih_csv: Path, tmp_path: Path) -> None:
    images = shared_data / "nih_sample"
    with pytest.raises(ValueError, match="not both"):
        prepare(images, tmp_path / "out", metadata=nih_csv, manifest=shared_data / "cxr" / "manifest.csv")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        prepare(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .png"):
        prepare(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        prepare(images, tmp_path / "out", metadata=tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="lr_size"):
        prepare(images, tmp_path / "out", metadata=nih_csv, hr_size=64, lr_size=64)
    clash = tmp_path / "clash"
    clash.mkdir()
    Image.fromarray(noise((300, 300))).save(clash / "a.png")
    Image.fromarray(noise((300, 300))).save(clash / "a.jpg")
    with pytest.raises(ValueError, match="share a stem"):
        prepare(clash, tmp_path / "out")


# --- several sources into one set -----------------------------------------------------------------------

SOURCES = ("nih_starter", "nih", "cxr", "pediatric")


@pytest.fixture(scope="module")
def four_sources(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Source]:
    """Real files of the four training sources, a slice of each with its manifest rows (every image of
    the pediatric patients kept, so patients with several images are in it)."""
    sliced = tmp_path_factory.mktemp("sources")
    sources = []
    for name, count in zip(SOURCES, (12, 10, 14, 20), strict=True):
        if not (shared_data / name / "HR_256").is_dir():
            pytest.skip(f"needs ../shared/data: the source {name} (not found)")
        folder = sliced / name
        (folder / "HR_256").mkdir(parents=True)
        with open(shared_data / name / "manifest.csv", newline="") as file:
            rows = list(csv.DictReader(file))
        patients = sorted({row["patient_id"] for row in rows})[:count]
        chosen = [row for row in rows if row["patient_id"] in patients]
        with open(folder / "manifest.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(chosen[0]))
            writer.writeheader()
            writer.writerows(chosen)
        for row in chosen:
            (folder / "HR_256" / row["filename"]).symlink_to(shared_data / name / "HR_256" / row["filename"])
        sources.append(Source(name, folder))
    return sources


def test_prepare_sources_splits_by_patient_across_every_source(
    shared_data: Path, four_sources: list[Source], tmp_path: Path
) -> None:
    report = prepare_sources(four_sources, tmp_path, views=None, workers=2, show_progress=False)

    rows = read_splits(tmp_path, with_source=True)
    assert report.input_kind == "sources" and report.images_dir is None
    assert report.options.views is None and report.options.view_filter_applied is False
    manifests = {source.name: read_manifest(source.images_dir / "manifest.csv") for source in four_sources}
    # Every manifest row is kept, under its own source's name, with its patient and view.
    assert sorted((row["source"], row["filename"]) for row in rows) == sorted(
        (name, filename) for name, records in manifests.items() for filename in records
    )
    for row in rows:
        meta = manifests[row["source"]][row["filename"]]
        assert (row["patient_id"], row["view"]) == (meta.patient_id, meta.view or "")
    # No patient id in two splits, across all sources together (nih and nih_starter share the nih: namespace).
    split_of_patient: dict[str, set[str]] = {}
    for row in rows:
        split_of_patient.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in split_of_patient.values())
    assert sum(len(set(meta.patient_id for meta in m.values())) > len(m) / 2 for m in manifests.values()) >= 3
    # Per-source counts in the report match the rows; every source is split (each has test images to report).
    by_source = {source.name: source for source in report.sources}
    assert [source.name for source in report.sources] == list(SOURCES)
    for name in SOURCES:
        mine = [row for row in rows if row["source"] == name]
        assert by_source[name].counts.kept == len(mine) == len(manifests[name])
        for split in ("train", "val", "test"):
            chosen = [row for row in mine if row["split"] == split]
            assert by_source[name].splits[split] == {
                "images": len(chosen), "patients": len({row["patient_id"] for row in chosen})
            }
            assert chosen, f"{name} has no {split} images"
    assert report.counts.kept == len(rows)
    assert report.splits["test"]["images"] == sum(by_source[name].splits["test"]["images"] for name in SOURCES)
    written = json.loads((tmp_path / "prepare_report.json").read_text())
    assert [source["name"] for source in written["sources"]] == list(SOURCES)
    # The shared sets are 256² already: the prepared pairs are the shared pairs, byte for byte in pixels.
    for row in rows[::7]:
        for folder in ("HR_256", "LR_64"):
            np.testing.assert_array_equal(read_png(tmp_path / folder / row["filename"]),
                                          read_png(shared_data / row["source"] / folder / row["filename"]))
    # The data loader reads the source column.
    from xraysr.training.data import read_splits as read_split_rows

    assert {row.source for row in read_split_rows(tmp_path)} == set(SOURCES)


def test_prepare_sources_refuses_clashing_names_and_duplicate_sources(
    four_sources: list[Source], tmp_path: Path
) -> None:
    cxr = four_sources[2]
    with pytest.raises(ValueError, match="both have"):
        prepare_sources([cxr, Source("cxr_again", cxr.images_dir)], tmp_path / "a", views=None, show_progress=False)
    with pytest.raises(ValueError, match="unique"):
        prepare_sources([cxr, cxr], tmp_path / "b", views=None, show_progress=False)
    with pytest.raises(ValueError, match="no source"):
        prepare_sources([], tmp_path / "c")


def test_split_by_patient_is_stratified_by_source_and_keeps_a_shared_patient_together() -> None:
    records = [ImageMeta(f"a{index}.png", f"a:{index}", None, "a") for index in range(10)]
    records += [ImageMeta(f"b{index}.png", f"b:{index}", None, "b") for index in range(20)]
    records.append(ImageMeta("shared.png", "a:3", None, "b"))  # one patient in two sources
    split_of = split_by_patient(records, seed=0)
    assert split_of["shared.png"] == split_of["a3.png"]
    for source, patients in (("a", 10), ("b", 20)):
        counts = Counter(split_of[r.filename] for r in records if r.source == source and r.filename != "shared.png")
        assert counts == {"train": round(0.7 * patients), "val": round(0.2 * patients), "test": round(0.1 * patients)}


def test_prepare_command_combines_sources(four_sources: list[Source], tmp_path: Path) -> None:
    from xraysr.service.cli import main

    arguments = ["prepare", "--views", "all", "--out", str(tmp_path), "--workers", "1"]
    for source in four_sources[:2]:
        arguments += ["--source", f"{source.name}={source.images_dir}"]
    assert main(arguments) == 0
    assert {row["source"] for row in read_splits(tmp_path, with_source=True)} == {"nih_starter", "nih"}
    assert main(["prepare", "--out", str(tmp_path / "x"), "--source", "no-equals-sign"]) == 2
    assert main(["prepare", "--out", str(tmp_path / "x"), "--images", str(tmp_path),
                 "--source", f"a={four_sources[0].images_dir}"]) == 2
