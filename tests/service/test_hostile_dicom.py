"""Hostile DICOM on a real server under an address-space limit: nesting, element floods, scan floods, invalid
values for the Secondary Capture, and what must still pass. Each test reproduces a finding of the issue
"Hostile input, round 3"; the server runs under RLIMIT_AS so that a regression fails here instead of taking
the machine's memory (the nesting bomb took 23 GB before it was bounded)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.service.dicom_files import (
    dicom_file,
    jpeg_dicom,
    nested_sequence,
    private_elements,
    with_raw_elements,
)
from tests.service.serving import DEFAULT_ENGINES, memory_mb
from xraysr.service.codec_limits import MAX_JPEG_SCANS
from xraysr.service.dicom_structure import MAX_ELEMENTS, MAX_SEQUENCE_DEPTH
from xraysr.service.tools.local_server import local_server_process

pydicom = pytest.importorskip("pydicom", reason="DICOM input needs pydicom")

ADDRESS_SPACE = 2 << 30  # the server's VmPeak is ~0.6 GB serving the default model on 2 cores
DICOM_ANSWER = {"content-type": "application/dicom", "accept": "application/dicom"}
STUDY = "1.2.826.0.1.3680043.10.1234.1"


def _xray(size: int = 64) -> np.ndarray:
    ramp = np.add.outer(np.arange(size), np.arange(size)) * (255 / (2 * size - 2))
    return np.rint(ramp).astype(np.uint8)


def _study_dicom(**elements: object) -> bytes:
    return dicom_file(_xray(), StudyInstanceUID=STUDY, PatientID="P1", **elements)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    log = tmp_path_factory.mktemp("hostile-dicom") / "server.log"
    with local_server_process(DEFAULT_ENGINES, "cxr-default", log=log, address_space_bytes=ADDRESS_SPACE) as (
        url,
        process,
    ):
        yield url, process.pid


@pytest.mark.parametrize(("depth", "undefined"), [(300, False), (150, True), (300, True)])
def test_deep_nesting_is_422_before_the_model_runs_and_the_server_stays(
    server: tuple[str, int], depth: int, undefined: bool
) -> None:
    url, pid = server
    body = with_raw_elements(_study_dicom(), nested_sequence(depth, undefined), before_group=0x0011)
    assert len(body) < 16 << 10
    before = memory_mb(pid)
    response = httpx.post(f"{url}/upscale", content=body, headers=DICOM_ANSWER, timeout=60)
    assert response.status_code == 422, response.text
    assert f"nests sequences more than {MAX_SEQUENCE_DEPTH} deep" in response.json()["detail"]
    assert "X-Answer" not in response.headers  # refused before the model ran
    assert memory_mb(pid) - before < 100
    assert httpx.get(f"{url}/readyz").status_code == 200


@pytest.mark.parametrize(("depth", "kept"), [(1, ["ID"]), (MAX_SEQUENCE_DEPTH - 1, None)])
def test_nesting_within_the_bound_answers_with_the_allow_listed_level_only(
    server: tuple[str, int], depth: int, kept: list[str] | None
) -> None:
    url, _ = server
    body = with_raw_elements(_study_dicom(), nested_sequence(depth), before_group=0x0011)
    response = httpx.post(f"{url}/upscale", content=body, headers=DICOM_ANSWER, timeout=60)
    assert response.status_code == 200, response.text
    answer = pydicom.dcmread(BytesIO(response.content))
    # The allow-list keeps an item's PatientID, never a sequence nested in it: deep items keep nothing.
    found = [item.PatientID for item in answer.OtherPatientIDsSequence] if "OtherPatientIDsSequence" in answer else None
    assert found == kept
    assert answer.StudyInstanceUID == STUDY


@pytest.mark.parametrize("route", ["/upscale", "/shrink", "/ui/inspect"])
def test_an_element_flood_is_refused_in_milliseconds_on_every_route(server: tuple[str, int], route: str) -> None:
    url, pid = server
    flood = private_elements(1_000_000)  # 8 MB of empty elements: pydicom alone parses them for seconds
    body = with_raw_elements(dicom_file(_xray(256 if route == "/shrink" else 64)), flood, before_group=0x0010)
    before = memory_mb(pid)
    started = time.monotonic()
    response = httpx.post(f"{url}{route}", content=body, headers={"content-type": "application/dicom"}, timeout=60)
    elapsed = time.monotonic() - started
    assert response.status_code in (413, 422), response.text  # /upscale and /ui/inspect: over the 1 MiB body cap
    if response.status_code == 422:
        assert f"more than {MAX_ELEMENTS} elements" in response.json()["detail"]
    assert elapsed < 2.0
    assert memory_mb(pid) - before < 150


def test_an_element_flood_under_the_body_cap_is_422_on_upscale(server: tuple[str, int]) -> None:
    url, _ = server
    body = with_raw_elements(_study_dicom(), private_elements(MAX_ELEMENTS + 1), before_group=0x0011)
    response = httpx.post(f"{url}/upscale", content=body, headers=DICOM_ANSWER, timeout=60)
    assert response.status_code == 422
    assert f"more than {MAX_ELEMENTS} elements" in response.json()["detail"]


def test_a_progressive_jpeg_with_repeated_scans_is_refused_before_decoding(server: tuple[str, int]) -> None:
    url, _ = server
    body = jpeg_dicom(_xray(1024), repeat_last_scan=2000)
    started = time.monotonic()
    response = httpx.post(f"{url}/shrink", content=body, headers={"content-type": "application/dicom"}, timeout=120)
    assert response.status_code == 422, response.text
    assert f"over this server's limit of {MAX_JPEG_SCANS}" in response.json()["detail"]
    assert time.monotonic() - started < 2.0


def test_an_ordinary_progressive_jpeg_dicom_still_shrinks(server: tuple[str, int]) -> None:
    url, _ = server
    response = httpx.post(
        f"{url}/shrink", content=jpeg_dicom(_xray(512)), headers={"content-type": "application/dicom"}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.headers["X-Original-Size"] == "512x512"


def test_a_large_deflated_16_bit_dicom_shrinks(server: tuple[str, int]) -> None:
    """Finding 10: the inflate cap is the route's (4096x4096 16-bit), not /upscale's 64x64."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    url, _ = server
    pixels = (np.add.outer(np.arange(2048), np.arange(2048)) * 8).astype(np.uint16)
    body = dicom_file(pixels, transfer_syntax=DeflatedExplicitVRLittleEndian)
    assert len(body) < 1 << 20  # a smooth ramp deflates to little; 8 MiB inflated
    response = httpx.post(f"{url}/shrink", content=body, headers={"content-type": "application/dicom"}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["X-Original-Size"] == "2048x2048"


def _answer_of(url: str, body: bytes) -> pydicom.Dataset:
    response = httpx.post(f"{url}/upscale", content=body, headers=DICOM_ANSWER, timeout=60)
    assert response.status_code == 200, response.text
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom warns "Invalid value for VR" reading an invalid one
        answer = pydicom.dcmread(BytesIO(response.content))
        for element in answer.iterall():
            _ = element.value
    return answer


@pytest.mark.parametrize(
    ("elements", "expected"),
    [
        ({"Modality": "dx"}, {"Modality": "DX"}),  # fixed: a Code String is upper case
        ({"Modality": "X" * 21}, {"Modality": "OT"}),  # over CS's 16: not the input's, so "other"
        ({"PatientName": "Doe^Jane\r\nX-Injected: 1"}, {"PatientName": ""}),  # control characters: dropped
        ({"PatientName": "Doe\x00Jane"}, {"PatientName": ""}),
        ({"PatientName": "A" * 100_000}, {"PatientName": ""}),  # over PN's 64 a component
        ({"AccessionNumber": "A" * 17}, {"AccessionNumber": ""}),  # over SH's 16
        ({"PatientAge": "forty"}, {"PatientAge": None}),  # not an Age String: left out
        ({"PatientWeight": "NaN"}, {"PatientWeight": None}),
        ({"StudyDescription": "Chest PA"}, {"StudyDescription": "Chest PA"}),  # valid values are kept
    ],
)
def test_invalid_values_are_fixed_or_left_out_of_the_dicom_answer(
    server: tuple[str, int], elements: dict[str, object], expected: dict[str, object]
) -> None:
    url, _ = server
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns while writing the invalid input, as it should
        body = _study_dicom(**elements)
    answer = _answer_of(url, body)
    for keyword, value in expected.items():
        if value is None:
            assert keyword not in answer
        else:
            assert str(answer[keyword].value) == value, keyword


@pytest.mark.parametrize(
    "study",
    ["<script>x</script>", "1." + "2" * 200, ["1.2.3", "1.2.4"]],
    ids=["markup", "too-long", "multi-valued"],
)
def test_an_invalid_study_uid_is_406_not_copied(server: tuple[str, int], study: object) -> None:
    url, _ = server
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        body = dicom_file(_xray(), StudyInstanceUID=study, PatientID="P1")
    response = httpx.post(f"{url}/upscale", content=body, headers=DICOM_ANSWER, timeout=60)
    assert response.status_code == 406, response.text
    assert "StudyInstanceUID" in response.json()["detail"]
    assert httpx.post(f"{url}/upscale", content=body, headers={"content-type": "application/dicom"}).status_code == 200


def test_the_cli_refuses_a_nested_dicom_in_its_words(tmp_path: Path) -> None:
    import subprocess
    import sys

    nest = tmp_path / "nest.dcm"
    nest.write_bytes(with_raw_elements(_study_dicom(), nested_sequence(300), before_group=0x0011))
    result = subprocess.run(
        [sys.executable, "-m", "xraysr.service.cli", "upscale", str(nest), "-o", str(tmp_path / "out.dcm")],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: __import__("resource").setrlimit(__import__("resource").RLIMIT_AS, (ADDRESS_SPACE,) * 2),
    )
    assert result.returncode == 1, result.stderr
    assert f"nests sequences more than {MAX_SEQUENCE_DEPTH} deep" in result.stderr
    assert not (tmp_path / "out.dcm").exists()
