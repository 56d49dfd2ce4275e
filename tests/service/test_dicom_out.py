"""DICOM in, DICOM out: real DICOMs made from a real NIH X-ray, sent to a real `xraysr serve` (the shipped model) and
through `xraysr upscale IN.dcm -o OUT.dcm`, come back as Secondary Captures checked tag by tag, pixel for pixel."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests import xrays
from tests.service.dicom_files import dicom_file
from tests.service.serving import DEFAULT_ENGINES
from xraysr.service import __version__
from xraysr.service.cli import main
from xraysr.service.dicom_out import NEEDS_DICOM_INPUT, SECONDARY_CAPTURE_IMAGE_STORAGE, series_number
from xraysr.service.dicom_uids import check_uid_root, make_uid, series_instance_uid
from xraysr.service.manifest import load_manifest
from xraysr.service.provenance import DISCLAIMER
from xraysr.service.settings import SettingsError, load_settings
from xraysr.service.tools.local_server import local_server

pydicom = pytest.importorskip("pydicom", reason="DICOM output needs pydicom")

UID_ROOT = "1.2.826.0.1.3680043.9.7"
STEPS, SEED = 20, 7
STUDY = "1.2.826.0.1.3680043.9.7.1.1"
PATIENT_AND_STUDY = {
    "PatientName": "Doe^Jane",
    "PatientID": "NIH-00000001",
    "PatientBirthDate": "19580412",
    "PatientSex": "F",
    "PatientAge": "068Y",
    "StudyInstanceUID": STUDY,
    "StudyDate": "20260315",
    "StudyTime": "093012",
    "AccessionNumber": "ACC4711",
    "StudyID": "S42",
    "ReferringPhysicianName": "Who^Doctor",
    "StudyDescription": "CHEST PA",
    "BodyPartExamined": "CHEST",
}
# What the input has that no longer applies to 8-bit full-range pixels; the values leave the input's pixels exactly
# the PNG's (RescaleSlope 1, and a LINEAR window over the full 16 bits is the full-range mapping).
STALE = {"RescaleSlope": 1, "RescaleIntercept": 0, "WindowCenter": 32768, "WindowWidth": 65536}
DROPPED = ("RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth", "VOILUTFunction",
           "VOILUTSequence", "ModalityLUTSequence", "SeriesInstanceUID")  # fmt: skip


@pytest.fixture(scope="module")
def lr_path() -> Path:
    return xrays.lr_paths()[0]


@pytest.fixture(scope="module")
def lr_pixels(lr_path: Path) -> np.ndarray:
    pixels = np.array(Image.open(lr_path))
    assert pixels.shape == (64, 64) and pixels.dtype == np.uint8
    return pixels


def x_ray_dicom(lr_pixels: np.ndarray, photometric: str, study: str = STUDY, **elements: Any) -> bytes:
    """The X-ray as a 16-bit DX DICOM whose decoding gives back exactly its 8-bit pixels (x257 fills 16 bits)."""
    gray = lr_pixels if photometric == "MONOCHROME2" else 255 - lr_pixels  # MONOCHROME1: white is the minimum
    tags = {
        **PATIENT_AND_STUDY,
        "StudyInstanceUID": study,
        "SeriesInstanceUID": f"{study}.2",
        "Modality": "DX",
        "InstanceNumber": 3,
        "PatientOrientation": ["P", "L"],
        "PixelSpacing": [0.7, 0.7],
        "ImagerPixelSpacing": [0.8, 0.8],
        **STALE,
        **elements,
    }
    return dicom_file(gray.astype(np.uint16) * 257, bits_stored=16, photometric=photometric, **tags)


@pytest.fixture(scope="module")
def server() -> Iterator[httpx.Client]:
    env = {"XRAYSR_DICOM_UID_ROOT": UID_ROOT, "XRAYSR_THREADS": "1"}
    with (
        local_server(DEFAULT_ENGINES, "cxr-default", ready_timeout=120, env=env) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def model_version(server: httpx.Client) -> str:
    return str(server.get("/readyz").json()["version"])


def upscale(
    server: httpx.Client, body: bytes, content_type: str, accept: str | None = None, **params: str
) -> httpx.Response:
    headers = {"content-type": content_type, **({"accept": accept} if accept else {})}
    params = {"steps": str(STEPS), "seed": str(SEED), "samples": "1", **params}
    return server.post("/upscale", content=body, headers=headers, params=params)


@pytest.fixture(scope="module")
def png_answer(server: httpx.Client, lr_path: Path) -> np.ndarray:
    response = upscale(server, lr_path.read_bytes(), "image/png")
    assert response.status_code == 200, response.text
    return np.array(Image.open(io.BytesIO(response.content)))


def read_strictly(data: bytes) -> Any:
    """pydicom's own check: every element's value is read with validation raising, as a strict reader would."""
    assert data[128:132] == b"DICM" and data[:128] == bytes(128)
    with pydicom.config.strict_reading():
        dataset = pydicom.dcmread(io.BytesIO(data))
        for element in dataset.iterall():
            _ = element.value
    return dataset


def check_secondary_capture(answer: Any, source: Any, model_version: str, uid_root: str | None) -> None:
    """Every attribute the issue names, against the input it was made from."""
    prefix = f"{uid_root}." if uid_root else "2.25."
    meta = answer.file_meta
    # File meta and SOP Common
    assert meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert meta.MediaStorageSOPClassUID == answer.SOPClassUID == SECONDARY_CAPTURE_IMAGE_STORAGE
    assert meta.MediaStorageSOPInstanceUID == answer.SOPInstanceUID
    assert meta.ImplementationVersionName == f"XRAYSR_{__version__}"
    for uid in (answer.SOPInstanceUID, answer.SeriesInstanceUID, meta.ImplementationClassUID):
        assert uid.startswith(prefix) and uid.is_valid and len(uid) <= 64, uid
    assert answer.SOPInstanceUID != source.SOPInstanceUID
    assert answer.SeriesInstanceUID != source.SeriesInstanceUID
    # Patient, General Study (and Patient Study): kept
    for keyword in PATIENT_AND_STUDY:
        assert answer[keyword].value == source[keyword].value, keyword
    # General Series, SC Equipment
    assert answer.Modality == "DX"
    assert answer.SeriesNumber == series_number(answer.SeriesInstanceUID)
    assert answer.SeriesDescription == f"SYNTHETIC xraysr 4x super-resolution {model_version}"
    assert answer.ConversionType == "WSD"
    assert answer.SecondaryCaptureDeviceManufacturer == answer.Manufacturer == "xraysr"
    assert list(answer.SoftwareVersions) == [f"xraysr {__version__}", model_version]
    # General Image
    assert list(answer.ImageType) == ["DERIVED", "SECONDARY"]
    # The precision `auto` picks on this CPU, resolved as the server and the CLI resolve it.
    precision = load_settings(engines_dir=DEFAULT_ENGINES).precision
    assert answer.DerivationDescription == (
        f"xraysr {__version__}, model cxr-default {model_version} ({precision}): 4x super-resolution of a 64x64 "
        f"image, {STEPS} DDIM steps, seed {SEED}. {DISCLAIMER}"
    )
    assert answer.ImageComments == DISCLAIMER
    assert answer.BurnedInAnnotation == "NO"
    assert len(answer.SourceImageSequence) == 1
    reference = answer.SourceImageSequence[0]
    assert reference.ReferencedSOPClassUID == source.SOPClassUID
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert answer.InstanceNumber == 3 and list(answer.PatientOrientation) == ["P", "L"]
    assert "Laterality" not in answer  # CHEST, no side: an unpaired structure
    assert "ContentDate" in answer and "ContentTime" in answer
    # Spacing: the same field in 4x the pixels
    assert [float(value) for value in answer.PixelSpacing] == [0.175, 0.175]
    assert [float(value) for value in answer.ImagerPixelSpacing] == [0.2, 0.2]
    # Image Pixel: 8-bit MONOCHROME2, nothing left of the input's value mapping
    assert (answer.SamplesPerPixel, answer.PhotometricInterpretation) == (1, "MONOCHROME2")
    assert (answer.Rows, answer.Columns) == (256, 256)
    assert (answer.BitsAllocated, answer.BitsStored, answer.HighBit, answer.PixelRepresentation) == (8, 8, 7, 0)
    for keyword in DROPPED[:-1]:
        assert keyword not in answer, keyword


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_a_dicom_comes_back_as_a_secondary_capture_with_the_png_answers_pixels(
    server: httpx.Client, model_version: str, lr_pixels: np.ndarray, png_answer: np.ndarray, photometric: str
) -> None:
    body = x_ray_dicom(lr_pixels, photometric)
    response = upscale(server, body, "application/dicom", accept="application/dicom")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    assert (response.headers["x-seed"], response.headers["x-steps"]) == (str(SEED), str(STEPS))
    assert "dicom;dur=" in response.headers["server-timing"]
    answer = read_strictly(response.content)
    check_secondary_capture(answer, pydicom.dcmread(io.BytesIO(body)), model_version, UID_ROOT)
    np.testing.assert_array_equal(answer.pixel_array, png_answer)


def test_an_enforced_answer_says_so_and_carries_the_projected_pixels(
    server: httpx.Client, lr_path: Path, lr_pixels: np.ndarray
) -> None:
    png = upscale(server, lr_path.read_bytes(), "image/png", consistency="enforce")
    body = x_ray_dicom(lr_pixels, "MONOCHROME2")
    response = upscale(server, body, "application/dicom", accept="application/dicom", consistency="enforce")
    assert png.status_code == response.status_code == 200, response.text
    answer = pydicom.dcmread(io.BytesIO(response.content))
    np.testing.assert_array_equal(answer.pixel_array, np.array(Image.open(io.BytesIO(png.content))))
    assert answer.DerivationDescription.endswith(
        f"seed {SEED}; projected onto its input, 4 back-projection iterations. {DISCLAIMER}"
    )
    assert response.headers["x-lr-consistency-psnr"] == png.headers["x-lr-consistency-psnr"]


def test_one_running_server_puts_a_studys_answers_in_one_series_and_another_studys_in_another(
    server: httpx.Client, lr_pixels: np.ndarray
) -> None:
    def answer(study: str) -> Any:
        body = x_ray_dicom(lr_pixels, "MONOCHROME2", study)
        response = upscale(server, body, "application/dicom", accept="application/dicom")
        assert response.status_code == 200, response.text
        return pydicom.dcmread(io.BytesIO(response.content))

    first, second, other = answer(STUDY), answer(STUDY), answer(f"{STUDY}.9")
    assert first.SeriesInstanceUID == second.SeriesInstanceUID != other.SeriesInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert other.StudyInstanceUID == f"{STUDY}.9"


def test_dicom_asked_for_a_png_input_is_406(server: httpx.Client, lr_path: Path) -> None:
    response = upscale(server, lr_path.read_bytes(), "image/png", accept="application/dicom")
    assert response.status_code == 406
    assert response.json() == {"detail": NEEDS_DICOM_INPUT}


def test_dicom_asked_for_a_dicom_without_its_study_is_406(server: httpx.Client, lr_pixels: np.ndarray) -> None:
    body = dicom_file(lr_pixels)  # no StudyInstanceUID
    response = upscale(server, body, "application/dicom", accept="application/dicom")
    assert response.status_code == 406
    assert response.json()["detail"].startswith("DICOM output needs the input's StudyInstanceUID")
    assert upscale(server, body, "application/dicom").status_code == 200  # a PNG answer needs no study


def test_a_transfer_syntax_the_server_cannot_decode_is_415_naming_it(
    server: httpx.Client, lr_pixels: np.ndarray
) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLosslessSV1

    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder plugin is installed here")
    body = dicom_file(lr_pixels, transfer_syntax=JPEGLosslessSV1, pixel_data=encapsulate([b"\xff\xd8\xff\xc3 x"]))
    response = upscale(server, body, "application/dicom", accept="application/dicom")
    assert response.status_code == 415
    assert response.json()["detail"].startswith(
        "DICOM transfer syntax JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value "
        "1]) (1.2.840.10008.1.2.4.70) cannot be decoded by this server: no decoder plugin for it is installed"
    )


def test_an_unknown_transfer_syntax_is_415_naming_it(lr_pixels: np.ndarray) -> None:
    from pydicom.encaps import encapsulate

    from xraysr.service.imaging import UnsupportedMediaType, decode_image

    known = dicom_file(lr_pixels, transfer_syntax="1.2.840.10008.1.2.4.80", pixel_data=encapsulate([b"\xff\xd8"]))
    unknown = known.replace(b"1.2.840.10008.1.2.4.80", b"1.2.840.10008.1.2.4.88", 1)  # same length: meta stays valid
    with pytest.raises(UnsupportedMediaType) as refusal:
        decode_image(unknown, "application/dicom")
    assert refusal.value.message.startswith(
        "DICOM transfer syntax 1.2.840.10008.1.2.4.88 cannot be decoded by this server: it is not a transfer syntax "
        "this server knows"
    )


def test_openapi_describes_the_dicom_answer_and_the_406(server: httpx.Client) -> None:
    responses = server.get("/openapi.json").json()["paths"]["/upscale"]["post"]["responses"]
    assert "application/dicom" in responses["200"]["content"]
    assert "Secondary Capture" in responses["200"]["description"]
    assert "406" in responses


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian: dicom3tools) is not installed")
def test_dciodvfy_finds_no_error_in_the_answer(server: httpx.Client, lr_pixels: np.ndarray, tmp_path: Path) -> None:
    response = upscale(server, x_ray_dicom(lr_pixels, "MONOCHROME1"), "application/dicom", "application/dicom")
    assert response.status_code == 200, response.text
    path = tmp_path / "answer.dcm"
    path.write_bytes(response.content)
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    lines = (report.stdout + report.stderr).splitlines()
    assert "SCImage" in lines  # it recognised the IOD it checked against
    assert [line for line in lines if line.startswith("Error")] == []


def test_the_cli_writes_a_secondary_capture_for_a_dcm_output(
    lr_pixels: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XRAYSR_DICOM_UID_ROOT", raising=False)  # the default: UUID-derived UIDs
    source = tmp_path / "in.dcm"
    source.write_bytes(x_ray_dicom(lr_pixels, "MONOCHROME1"))
    common = ["--steps", str(STEPS), "--seed", str(SEED), "--samples", "1", "--engines-dir", str(DEFAULT_ENGINES)]
    assert main(["upscale", str(source), "-o", str(tmp_path / "out.dcm"), *common]) == 0
    assert main(["upscale", str(source), "-o", str(tmp_path / "out.png"), *common]) == 0
    answer = read_strictly((tmp_path / "out.dcm").read_bytes())
    model_version = load_manifest(DEFAULT_ENGINES / "cxr-default").version
    check_secondary_capture(answer, pydicom.dcmread(source), model_version, uid_root=None)
    np.testing.assert_array_equal(answer.pixel_array, np.array(Image.open(tmp_path / "out.png")))


def test_the_cli_refuses_a_dcm_output_for_a_png_input(
    lr_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.dcm"
    assert main(["upscale", str(lr_path), "-o", str(output), "--engines-dir", str(DEFAULT_ENGINES)]) == 1
    assert "out.dcm: a DICOM output needs a DICOM input" in capsys.readouterr().err
    assert not output.exists()


# --- UIDs and the UID root setting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("root", "refusal"),
    [
        ("1.02.3", "not a DICOM UID root"),
        ("3.1.4", "not a DICOM UID root"),
        ("1.2.x", "not a DICOM UID root"),
        ("2.25", "2.25 is the UUID arc, not a root"),
        ("1.2.826.0.1.3680043.10.123456789012345678901", "a UID root of 44 characters is too long: at most 40"),
    ],
)
def test_a_bad_uid_root_stops_start_up_naming_the_setting(
    root: str, refusal: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XRAYSR_DICOM_UID_ROOT", root)
    with pytest.raises(SettingsError, match=r"^dicom_uid_root: ") as error:
        load_settings(engines_dir=DEFAULT_ENGINES)
    assert refusal in str(error.value)


@pytest.mark.parametrize(("given", "kept"), [("1.2.826.0.1.3680043.9.7.", UID_ROOT), ("", None), (UID_ROOT, UID_ROOT)])
def test_a_uid_root_loses_its_trailing_dot_and_empty_means_unset(
    given: str, kept: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XRAYSR_DICOM_UID_ROOT", given)
    assert load_settings(engines_dir=DEFAULT_ENGINES).dicom_uid_root == kept


@pytest.mark.parametrize("root", [None, UID_ROOT, "1.2.826.0.1.3680043.10.12345678901234567"])  # 40 characters
def test_made_uids_are_valid_unique_and_derived_ones_repeat(root: str | None) -> None:
    made = {make_uid(root) for _ in range(100)}
    assert len(made) == 100
    assert all(pydicom.uid.UID(uid).is_valid and len(uid) <= 64 for uid in made)
    assert all(uid.startswith(f"{root or '2.25'}.") for uid in made)
    assert series_instance_uid(root, "v1", STUDY) == series_instance_uid(root, "v1", STUDY)
    assert series_instance_uid(root, "v1", STUDY) != series_instance_uid(root, "v2", STUDY)
    assert series_instance_uid(root, "v1", STUDY) != series_instance_uid(root, "v1", STUDY + ".9")
    assert check_uid_root("1.2.826.0.1.3680043.10.12345678901234567") == "1.2.826.0.1.3680043.10.12345678901234567"


# --- What is carried over, in-process (the shipped model's manifest, the PNG's pixels as the "answer") ------------


def secondary_capture_of(body: bytes, lr_pixels: np.ndarray, samples: int = 1) -> Any:
    from xraysr.service.dicom_out import read_source, secondary_capture
    from xraysr.service.pipeline import UpscaleResult

    manifest = load_manifest(DEFAULT_ENGINES / "cxr-default")
    image = np.kron(lr_pixels, np.ones((4, 4), np.uint8))  # any 256x256 uint8 image does here
    result = UpscaleResult(image=image, steps=STEPS, seed=SEED, samples=samples, uncertainty=None)
    return read_strictly(secondary_capture(read_source(body), result, manifest, UID_ROOT))


@pytest.mark.parametrize(
    ("elements", "laterality"),
    [
        ({}, None),  # CHEST without a side: absent
        ({"ImageLaterality": "L", "BodyPartExamined": "HAND"}, "L"),  # DX's ImageLaterality becomes the series'
        ({"Laterality": "R", "BodyPartExamined": "KNEE"}, "R"),
        ({"BodyPartExamined": None}, ""),  # no body part named: present and empty, "not known"
    ],
)
def test_laterality_is_the_inputs_side(lr_pixels: np.ndarray, elements: dict[str, Any], laterality: str | None) -> None:
    answer = secondary_capture_of(x_ray_dicom(lr_pixels, "MONOCHROME2", **elements), lr_pixels)
    assert answer.get("Laterality") == laterality


def test_a_lossy_input_stays_flagged_lossy(lr_pixels: np.ndarray) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    buffer = io.BytesIO()
    Image.fromarray(lr_pixels).save(buffer, format="JPEG", quality=95)
    jpeg = dicom_file(
        lr_pixels, transfer_syntax=JPEGBaseline8Bit, pixel_data=encapsulate([buffer.getvalue()]), **PATIENT_AND_STUDY
    )
    assert secondary_capture_of(jpeg, lr_pixels).LossyImageCompression == "01"
    assert "LossyImageCompression" not in secondary_capture_of(x_ray_dicom(lr_pixels, "MONOCHROME2"), lr_pixels)


def test_names_keep_their_character_set(lr_pixels: np.ndarray) -> None:
    body = x_ray_dicom(lr_pixels, "MONOCHROME2", SpecificCharacterSet="ISO_IR 100", PatientName="Müller^Jürgen")
    answer = secondary_capture_of(body, lr_pixels)
    assert (answer.SpecificCharacterSet, answer.PatientName) == ("ISO_IR 100", "Müller^Jürgen")
    assert "Müller".encode("latin-1") in answer.PatientName.original_string


def test_the_derivation_names_every_sample_seed(lr_pixels: np.ndarray) -> None:
    answer = secondary_capture_of(x_ray_dicom(lr_pixels, "MONOCHROME2"), lr_pixels, samples=4)
    assert f"{STEPS} DDIM steps, mean of 4 samples, seeds {SEED} to {SEED + 3}. {DISCLAIMER}" in (
        answer.DerivationDescription
    )


def test_the_estimates_derivation_names_no_seed(lr_pixels: np.ndarray) -> None:
    from xraysr.service.dicom_out import derivation_description
    from xraysr.service.manifest import read_manifest
    from xraysr.service.pipeline import UpscaleResult

    estimate = UpscaleResult(image=lr_pixels, steps=1, seed=None, samples=0, uncertainty=None)
    text = derivation_description(estimate, read_manifest(DEFAULT_ENGINES / "cxr-default"))
    assert "the one-pass estimate (the network's posterior mean, no noise drawn)" in text and "seed" not in text


def test_a_deflated_input_makes_the_same_answer(lr_pixels: np.ndarray) -> None:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    deflated = x_ray_dicom(lr_pixels, "MONOCHROME2", transfer_syntax=DeflatedExplicitVRLittleEndian)
    answer = secondary_capture_of(deflated, lr_pixels)
    assert (answer.PatientName, answer.StudyInstanceUID) == ("Doe^Jane", STUDY)


def test_without_modality_or_spacing_the_answer_is_ot_without_spacing(lr_pixels: np.ndarray) -> None:
    body = x_ray_dicom(lr_pixels, "MONOCHROME2", Modality=None, PixelSpacing=None, ImagerPixelSpacing=None)
    answer = secondary_capture_of(body, lr_pixels)
    assert answer.Modality == "OT"
    assert "PixelSpacing" not in answer and "ImagerPixelSpacing" not in answer
