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
from xraysr.service.local_server import local_server

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
