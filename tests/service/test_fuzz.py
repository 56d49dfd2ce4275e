"""Property-based fuzzing, bounded to seconds: the decoders on mutated real files, and a real server on requests
drawn from its own OpenAPI schema. Any exception other than an ImageError, or any 5xx, is a failure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service.dicom_files import dicom_file
from xraysr.service.imaging import ImageError, decode_image
from xraysr.service.tools.local_server import local_server

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@pytest.fixture(scope="module")
def seeds(lr_png: bytes) -> list[bytes]:
    """Real inputs to mutate: an X-ray PNG, and the same pixels as plain and deflated DICOM."""
    pytest.importorskip("pydicom", reason="DICOM input needs pydicom")
    from io import BytesIO

    from PIL import Image
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    pixels = np.asarray(Image.open(BytesIO(lr_png)))
    return [
        lr_png,
        dicom_file(pixels, WindowCenter=128, WindowWidth=256),
        dicom_file(pixels.astype(np.uint16) * 16, bits_stored=12, transfer_syntax=DeflatedExplicitVRLittleEndian),
    ]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        match draw(st.sampled_from(["flip", "insert", "delete", "truncate", "overwrite"])):
            case "flip":
                data[position] ^= 1 << draw(st.integers(0, 7))
            case "insert":
                data[position:position] = draw(st.binary(min_size=1, max_size=16))
            case "delete":
                del data[position : position + draw(st.integers(1, 64))]
            case "truncate":
                del data[max(position, 1) :]
            case "overwrite":
                value = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"]))
                data[position : position + 4] = value
        if not data:
            data = bytearray(b"\x00")
    return bytes(data)


def test_decoders_raise_only_image_errors_on_mutated_real_files(seeds: list[bytes]) -> None:
    @FUZZ
    @given(data=mutated(seeds), content_type=st.sampled_from(["image/png", "application/dicom", None]))
    def decode(data: bytes, content_type: str | None) -> None:
        try:
            decoded = decode_image(data, content_type)
        except ImageError:
            return
        assert decoded.pixels.shape == (64, 64) and decoded.pixels.dtype == np.uint8

    decode()


@pytest.fixture(scope="module")
def server(tiny_engine_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    with local_server(tiny_engine_dir.parent, tiny_engine_dir.name, ready_timeout=60, log=log) as url:
        yield url


def _value_for(schema: dict, in_header: bool = False) -> st.SearchStrategy:
    """A value the schema allows, at and beyond its bounds, or garbage it does not (a header's stays what HTTP
    can carry, or the client refuses to send it)."""
    types = {option.get("type") for option in schema.get("anyOf", [schema])}
    garbage = st.sampled_from(["-1", "1e9", "abc", "0x10", "nan", "inf", "%00", "9" * 30, "0.001"])
    if "integer" in types:
        return st.one_of(st.integers(-(2**33), 2**33).map(str), garbage)
    text = st.from_regex(r"[!-~]{1,12}", fullmatch=True) if in_header else st.text(max_size=12)
    return st.one_of(text, garbage)


def test_the_server_never_answers_5xx_to_requests_drawn_from_its_schema(server: str, seeds: list[bytes]) -> None:
    operation = httpx.get(f"{server}/openapi.json").json()["paths"]["/upscale"]["post"]
    queries = {p["name"]: _value_for(p["schema"]) for p in operation["parameters"] if p["in"] == "query"}
    headers = {p["name"]: _value_for(p["schema"], True) for p in operation["parameters"] if p["in"] == "header"}
    assert set(queries) == {"steps", "seed", "samples", "consistency"} and set(headers) == {"x-request-timeout"}
    media_types = [*operation["requestBody"]["content"], "application/octet-stream", "text/plain", "image/jpeg"]
    client = httpx.Client(base_url=server, timeout=30)

    @FUZZ
    @given(
        query=st.fixed_dictionaries({}, optional={**queries, "step": st.just("10")}),
        header=st.fixed_dictionaries({}, optional=headers),
        content_type=st.sampled_from(media_types),
        accept=st.sampled_from(["image/png", "application/json", "application/dicom", "*/*"]),
        body=st.one_of(mutated(seeds), st.sampled_from(seeds), st.binary(max_size=256)),
    )
    def request(query: dict, header: dict, content_type: str, accept: str, body: bytes) -> None:
        if content_type == "multipart/form-data":
            response = client.post("/upscale", params=query, headers={**header, "accept": accept}, files={"file": body})
        else:
            headers = {**header, "content-type": content_type, "accept": accept}
            response = client.post("/upscale", params=query, content=body, headers=headers)
        # A 504 is the right answer to a client that asked for a deadline too short to meet; nothing else 5xx is.
        deadline_passed = response.status_code == 504 and "x-request-timeout" in header
        assert response.status_code < 500 or deadline_passed, (response.status_code, response.text)
        assert response.status_code == 200 or "detail" in response.json()

    with client:
        request()
    assert httpx.get(f"{server}/healthz").status_code == 200


# --- DICOM output: whatever the input's kept attributes hold, the answer is valid DICOM or a 4xx -----------------

_HOSTILE_TEXT = st.one_of(
    st.text(alphabet=st.sampled_from(list("AZaz09^=\\ .-_\r\n\t\x00\x1b\x7fé漢<>")), max_size=80),
    st.sampled_from(["A" * 65, "1.2.840.10008", "20240230", "040Y", "1e999", "DX", " dx ", "Doe^Jane=ドウ^ジェーン"]),
)
_KEPT_VALUES = {
    keyword: st.one_of(_HOSTILE_TEXT, st.lists(_HOSTILE_TEXT, min_size=2, max_size=3))
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientSex",
        "PatientAge",
        "PatientWeight",
        "StudyDate",
        "StudyDescription",
        "AccessionNumber",
        "Modality",
        "BodyPartExamined",
        "InstanceNumber",
    )
}
_KEPT_VALUES["SpecificCharacterSet"] = st.sampled_from(["ISO_IR 100", "ISO_IR 192", "GB18030", "ISO 2022 IR 87", "x"])
_STUDY_UIDS = st.one_of(st.just("1.2.3.4"), _HOSTILE_TEXT)


def test_dicom_output_is_valid_dicom_whatever_the_input_holds() -> None:
    import warnings
    from io import BytesIO

    pydicom = pytest.importorskip("pydicom", reason="DICOM output needs pydicom")
    from tests.service.serving import DEFAULT_ENGINES
    from xraysr.service.dicom_out import read_source, secondary_capture
    from xraysr.service.manifest import read_manifest
    from xraysr.service.pipeline import UpscaleResult

    manifest = read_manifest(DEFAULT_ENGINES / "cxr-default")
    result = UpscaleResult(np.zeros((256, 256), np.uint8), steps=1, seed=None, samples=0, uncertainty=None)
    pixels = np.zeros((64, 64), np.uint8)
    written: list[int] = []

    @FUZZ
    @given(elements=st.fixed_dictionaries({"StudyInstanceUID": _STUDY_UIDS}, optional=_KEPT_VALUES))
    def write(elements: dict) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the input is invalid on purpose
                data = dicom_file(pixels, **elements)
        except (ValueError, TypeError, LookupError, OverflowError):
            return  # pydicom could not even write this input: nothing to send
        try:
            source = read_source(data)
        except ImageError as error:
            assert error.status_code in (406, 422)
            return
        answer = secondary_capture(source, result, manifest, uid_root=None)
        written.append(len(answer))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "Invalid value for VR ..." and undecodable text are failures
            dataset = pydicom.dcmread(BytesIO(answer))
            for element in dataset.iterall():
                _ = element.value
        assert dataset.StudyInstanceUID == source.kept.StudyInstanceUID

    write()
    assert len(written) >= 50  # most inputs make an answer: the check above ran on them, not only on refusals


# --- POST /shrink on mutated full-size images: never a 5xx, and the server stays ---------------------------------


@pytest.fixture(scope="module")
def shrink_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tests.service.serving import DEFAULT_ENGINES

    log = tmp_path_factory.mktemp("fuzz-shrink") / "server.log"
    with local_server(DEFAULT_ENGINES, "cxr-default", log=log) as url:
        yield url


def test_shrink_never_answers_5xx_to_mutated_full_size_images(shrink_server: str) -> None:
    pytest.importorskip("pydicom", reason="DICOM input needs pydicom")
    from io import BytesIO

    from PIL import Image

    from tests.service.dicom_files import jpeg_dicom

    ramp = np.rint(np.add.outer(np.arange(256), np.arange(256)) / 2).astype(np.uint8)
    buffer = BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    full_size = [buffer.getvalue(), dicom_file(ramp.astype(np.uint16) * 256), jpeg_dicom(ramp)]
    client = httpx.Client(base_url=shrink_server, timeout=30)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
    @given(
        body=st.one_of(mutated(full_size), st.sampled_from(full_size)),
        content_type=st.sampled_from(["image/png", "application/dicom", "application/octet-stream", "multipart"]),
    )
    def shrink(body: bytes, content_type: str) -> None:
        if content_type == "multipart":
            response = client.post("/shrink", files={"file": body})
        else:
            response = client.post("/shrink", content=body, headers={"content-type": content_type})
        assert response.status_code < 500, (response.status_code, response.text)
        assert response.status_code == 200 or "detail" in response.json()

    with client:
        shrink()
    assert httpx.get(f"{shrink_server}/readyz").status_code == 200
