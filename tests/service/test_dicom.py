"""service/dicom.py's bounds: nothing is allocated that the header has not bounded first."""

from __future__ import annotations

import resource
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from tests.service.dicom_files import deflate_bomb, dicom_file
from xraysr.service.dicom import inflate_limit
from xraysr.service.imaging import ImageError, decode_image

pytest.importorskip("pydicom", reason="DICOM input needs pydicom")


def _refusal(data: bytes) -> ImageError:
    with pytest.raises(ImageError) as caught:
        decode_image(data, "application/dicom")
    return caught.value


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_deflated_dicom_decodes_like_the_plain_one() -> None:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16
    plain = decode_image(dicom_file(pixels, bits_stored=16), "application/dicom")
    deflated = decode_image(
        dicom_file(pixels, bits_stored=16, transfer_syntax=DeflatedExplicitVRLittleEndian), "application/dicom"
    )
    np.testing.assert_array_equal(deflated.pixels, plain.pixels)
    assert deflated.conversion == plain.conversion == "full_range_rescaled"


def test_a_deflated_dataset_under_the_cap_is_read() -> None:
    assert decode_image(deflate_bomb(inflate_limit(64 * 64) // 2), "application/dicom").pixels.shape == (64, 64)


def test_a_deflate_bomb_is_refused_without_inflating_it() -> None:
    bomb = deflate_bomb(900 << 20)  # under 1 MiB on the wire, 900 MiB inflated
    assert len(bomb) < 1 << 20
    before = _peak_rss_mb()
    error = _refusal(bomb)
    assert error.status_code == 422
    assert "inflates to more than" in error.message and "decompression-bomb" in error.message
    assert _peak_rss_mb() - before < 50  # pydicom alone would have allocated 900 MiB


@pytest.mark.parametrize(
    ("elements", "named"),
    [
        ({"RescaleIntercept": 1e300}, "RescaleIntercept"),
        ({"RescaleIntercept": "1e999"}, "RescaleIntercept inf"),
        ({"RescaleSlope": "-1e999"}, "RescaleSlope -inf"),
        ({"RescaleSlope": 1e305}, "RescaleSlope"),
        ({"RescaleSlope": 0}, "RescaleSlope 0"),
    ],
)
def test_absurd_rescale_attributes_are_422_naming_the_attribute(elements: dict, named: str) -> None:
    error = _refusal(dicom_file(np.zeros((64, 64), np.uint16), bits_stored=16, **elements))
    assert error.status_code == 422 and named in error.message, error.message


def test_a_huge_but_finite_slope_still_decodes() -> None:
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    decoded = decode_image(dicom_file(pixels, bits_stored=12, RescaleSlope=1e200), "application/dicom")
    assert decoded.pixels.max() == 255


def _jpeg(size: int) -> bytes:
    buffer = BytesIO()
    Image.fromarray(np.full((size, size), 128, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_a_jpeg_frame_larger_than_its_header_is_refused_before_decoding() -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    lying = dicom_file(
        np.zeros((64, 64), np.uint8), transfer_syntax=JPEGBaseline8Bit, pixel_data=encapsulate([_jpeg(4096)])
    )
    error = _refusal(lying)
    assert error.status_code == 422 and "4096x4096 but its header says 64x64" in error.message


def test_a_jpeg_frame_of_the_declared_size_decodes() -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    honest = dicom_file(
        np.zeros((64, 64), np.uint8), transfer_syntax=JPEGBaseline8Bit, pixel_data=encapsulate([_jpeg(64)])
    )
    pixels = decode_image(honest, "application/dicom").pixels
    assert pixels.shape == (64, 64) and abs(int(pixels.mean()) - 128) <= 2
