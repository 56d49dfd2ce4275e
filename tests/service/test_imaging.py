"""service/imaging.py: real PNG and DICOM bytes in, exact 8-bit pixels out, every refusal a typed ImageError."""

from __future__ import annotations

import random
import struct
import sys
import time
import warnings
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import xrays
from tests.service.dicom_files import dicom_file
from xraysr.service.imaging import (
    BodyTooLarge,
    EmptyBody,
    ImageError,
    InvalidImage,
    UnsupportedMediaType,
    UnsupportedPixels,
    WrongSize,
    check_body_size,
    decode_image,
    encode_png,
)


@pytest.fixture(scope="module")
def lr_paths() -> list[Path]:
    return xrays.lr_paths()


@pytest.fixture(scope="module")
def lr_gray(lr_paths: list[Path]) -> np.ndarray:
    """The first real 64x64 LR X-ray, as Pillow reads it."""
    with Image.open(lr_paths[0]) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def lr_png(lr_paths: list[Path]) -> bytes:
    return lr_paths[0].read_bytes()


def _png(image: Image.Image, **save_options) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="PNG", **save_options)
    return buffer.getvalue()


def _refusal(data: bytes, content_type: str | None = "image/png", **options) -> ImageError:
    with pytest.raises(ImageError) as caught:
        decode_image(data, content_type, **options)
    return caught.value


# --- errors and limits -----------------------------------------------------------------------------------------


def test_each_refusal_carries_its_http_status() -> None:
    statuses = {
        cls: cls.status_code
        for cls in (EmptyBody, BodyTooLarge, UnsupportedMediaType, InvalidImage, WrongSize, UnsupportedPixels)
    }
    assert statuses == {
        EmptyBody: 400,
        BodyTooLarge: 413,
        UnsupportedMediaType: 415,
        InvalidImage: 422,
        WrongSize: 422,
        UnsupportedPixels: 422,
    }
    error = WrongSize("expected a 64x64 image, got 128x96", (128, 96))
    assert isinstance(error, InvalidImage) and isinstance(error, ValueError)
    assert error.message == str(error) == "expected a 64x64 image, got 128x96"
    assert error.size == (128, 96)


def test_body_size_limit_is_inclusive() -> None:
    check_body_size(1024, max_bytes=1024)
    with pytest.raises(BodyTooLarge, match="the request body is 1025 bytes; this server accepts at most 1024 bytes"):
        check_body_size(1025, max_bytes=1024)


def test_an_empty_body_is_400() -> None:
    error = _refusal(b"")
    assert isinstance(error, EmptyBody) and error.status_code == 400


# --- content types ---------------------------------------------------------------------------------------------


def test_another_content_type_is_415_naming_what_was_sent_and_what_is_accepted(lr_png: bytes) -> None:
    error = _refusal(lr_png, "text/plain; charset=utf-8")
    assert isinstance(error, UnsupportedMediaType) and error.status_code == 415
    assert "'text/plain'" in error.message and "image/png or application/dicom" in error.message


def test_content_type_parameters_and_case_are_ignored(lr_png: bytes, lr_gray: np.ndarray) -> None:
    decoded = decode_image(lr_png, " Image/PNG ; charset=binary")
    np.testing.assert_array_equal(decoded.pixels, lr_gray)


@pytest.mark.parametrize("content_type", [None, "", "application/octet-stream", "APPLICATION/OCTET-STREAM; x=1"])
def test_octet_stream_and_missing_type_sniff_a_png(lr_png: bytes, lr_gray: np.ndarray, content_type) -> None:
    decoded = decode_image(lr_png, content_type)
    assert decoded.source_format == "png"
    np.testing.assert_array_equal(decoded.pixels, lr_gray)


def test_octet_stream_that_is_neither_png_nor_dicom_is_415() -> None:
    error = _refusal(b"\xff\xd8\xff\xe0 a JPEG, really", "application/octet-stream")
    assert isinstance(error, UnsupportedMediaType)
    assert "looks like a JPEG" in error.message and "neither a PNG nor a DICOM" in error.message


# --- real PNGs -------------------------------------------------------------------------------------------------


def test_real_lr_pngs_decode_to_exactly_the_pixels_pillow_reads(lr_paths: list[Path]) -> None:
    for path in lr_paths:
        decoded = decode_image(path.read_bytes(), "image/png")
        with Image.open(path) as image:
            expected = np.asarray(image)
        assert decoded.source_format == "png" and decoded.conversion is None, path.name
        assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape == (64, 64), path.name
        np.testing.assert_array_equal(decoded.pixels, expected, err_msg=path.name)


def test_decoded_pixels_are_read_only(lr_png: bytes) -> None:
    decoded = decode_image(lr_png, "image/png")
    with pytest.raises(ValueError, match="read-only"):
        decoded.pixels[0, 0] = 1


def test_16bit_png_is_rescaled_by_the_full_16bit_range_not_min_max() -> None:
    values = np.full((64, 64), 1000, dtype=np.uint16)
    # 0 -> 0, 65535 -> 255, 257 -> 1 (one 8-bit level), 128 -> 0 and 129 -> 1 (either side of 128.5),
    # 32896 = 128 * 257 -> 128, 4095 (12-bit white) -> 16: a 12-bit image stays dark, as windowing says.
    row = [0, 65535, 257, 128, 129, 32896, 4095]
    values[0, : len(row)] = row
    data = _png(Image.fromarray(values))
    with Image.open(BytesIO(data)) as saved:
        assert saved.mode == "I;16"
    decoded = decode_image(data, "image/png")
    assert decoded.conversion == "16bit_rescaled"
    assert decoded.pixels[0, : len(row)].tolist() == [0, 255, 1, 0, 1, 128, 16]
    assert (decoded.pixels[1:] == 4).all()  # 1000 * 255 / 65535 = 3.89


def test_rgb_grayscale_becomes_the_same_gray(lr_gray: np.ndarray) -> None:
    data = _png(Image.fromarray(np.stack([lr_gray] * 3, axis=-1)))
    decoded = decode_image(data, "image/png")
    assert decoded.conversion == "rgb_to_luma"
    np.testing.assert_array_equal(decoded.pixels, lr_gray)


def test_rgb_with_channels_two_levels_apart_becomes_itu_601_luma(lr_gray: np.ndarray) -> None:
    red = lr_gray.astype(np.int16)
    green = np.clip(red + 2, 0, 255)
    blue = np.clip(red + 1, 0, 255)
    rgb = np.stack([red, green, blue], axis=-1).astype(np.uint8)
    decoded = decode_image(_png(Image.fromarray(rgb)), "image/png")
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    assert decoded.conversion == "rgb_to_luma"
    assert np.abs(decoded.pixels.astype(np.float64) - luma).max() <= 1.0
    rgb[0, 0] = (100, 103, 100)  # one pixel three levels apart is colour
    error = _refusal(_png(Image.fromarray(rgb)))
    assert isinstance(error, UnsupportedPixels) and "differ by up to 3 levels" in error.message


def test_rgba_grayscale_is_composited_on_black_then_luma(lr_gray: np.ndarray) -> None:
    alpha = np.full_like(lr_gray, 255)
    alpha[:32] = 128
    data = _png(Image.fromarray(np.stack([lr_gray, lr_gray, lr_gray, alpha], axis=-1)))
    decoded = decode_image(data, "image/png")
    assert decoded.conversion == "rgba_to_luma"
    np.testing.assert_array_equal(decoded.pixels[32:], lr_gray[32:])
    expected_top = lr_gray[:32].astype(np.float64) * 128 / 255
    assert np.abs(decoded.pixels[:32] - expected_top).max() <= 1.0


def test_la_grayscale_is_composited_on_black(lr_gray: np.ndarray) -> None:
    alpha = np.zeros_like(lr_gray)
    alpha[:, 32:] = 255
    decoded = decode_image(_png(Image.fromarray(np.stack([lr_gray, alpha], axis=-1), mode="LA")), "image/png")
    assert decoded.conversion == "la_to_luma"
    assert (decoded.pixels[:, :32] == 0).all()
    np.testing.assert_array_equal(decoded.pixels[:, 32:], lr_gray[:, 32:])


def test_true_colour_is_refused(lr_gray: np.ndarray) -> None:
    rgb = np.stack([lr_gray, lr_gray, lr_gray], axis=-1)
    rgb[10:20, 10:20] = (255, 0, 0)  # a red annotation arrow burned into a grayscale film
    error = _refusal(_png(Image.fromarray(rgb)))
    assert isinstance(error, UnsupportedPixels) and error.status_code == 422
    assert "colour image: xraysr takes grayscale X-rays" in error.message and "up to 255 levels" in error.message


def test_grayscale_palette_becomes_its_gray_values(lr_gray: np.ndarray) -> None:
    image = Image.frombytes("P", (64, 64), lr_gray.tobytes())
    image.putpalette([level for index in range(256) for level in (255 - index,) * 3])  # an inverted gray ramp
    decoded = decode_image(_png(image), "image/png")
    assert decoded.conversion == "palette_to_luma"
    np.testing.assert_array_equal(decoded.pixels, 255 - lr_gray)


def test_colour_palette_is_refused(lr_gray: np.ndarray) -> None:
    image = Image.frombytes("P", (64, 64), lr_gray.tobytes())
    image.putpalette([level for index in range(256) for level in (index, 255 - index, 0)])
    assert isinstance(_refusal(_png(image)), UnsupportedPixels)


def test_1bit_png_is_refused(lr_gray: np.ndarray) -> None:
    data = _png(Image.fromarray(lr_gray > 128))
    with Image.open(BytesIO(data)) as saved:
        assert saved.mode == "1"
    error = _refusal(data)
    assert isinstance(error, UnsupportedPixels) and "1-bit" in error.message


def test_animated_png_is_refused(lr_gray: np.ndarray) -> None:
    frames = [Image.fromarray(lr_gray), Image.fromarray(255 - lr_gray)]
    data = _png(frames[0], save_all=True, append_images=frames[1:])
    error = _refusal(data)
    assert isinstance(error, UnsupportedPixels) and "animated PNG with 2 frames" in error.message


# --- malformed and wrong PNGs ----------------------------------------------------------------------------------


def test_wrong_size_is_422_naming_the_size_received(lr_gray: np.ndarray) -> None:
    error = _refusal(_png(Image.fromarray(np.zeros((96, 128), dtype=np.uint8))))
    assert isinstance(error, WrongSize) and error.status_code == 422
    assert error.message == (
        "expected a 64x64 image, got 128x96: xraysr enlarges 4x chest X-rays of exactly that size (thumbnails, "
        "downsampled archives); make one from a full-size image with `xraysr shrink IN -o OUT` or POST /shrink"
    )
    assert decode_image(_png(Image.fromarray(np.zeros((96, 96), np.uint8))), "image/png", expected_size=96)


def test_png_truncated_at_half_is_422(lr_png: bytes) -> None:
    error = _refusal(lr_png[: len(lr_png) // 2])
    assert type(error) is InvalidImage and error.status_code == 422
    assert error.message.startswith("corrupt or truncated PNG")


def test_a_text_file_sent_as_png_is_422() -> None:
    error = _refusal(b"PatientName,Study\nDoe^John,CHEST PA\n")
    assert type(error) is InvalidImage and error.message == "the body is not a PNG (it looks like text)"


def test_jpeg_sent_as_png_is_422_not_a_png(lr_gray: np.ndarray) -> None:
    buffer = BytesIO()
    Image.fromarray(lr_gray).save(buffer, format="JPEG")
    error = _refusal(buffer.getvalue(), "image/png")
    assert type(error) is InvalidImage and error.message == "the body is not a PNG (it looks like a JPEG)"


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR claims width x height, its CRC fixed so the header itself is valid."""
    data = bytearray(_png(Image.new("L", (1, 1))))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


@pytest.mark.parametrize(
    ("width", "height", "limit_text"),
    [
        (5000, 5000, "over this server's limit of 16777216 pixels"),  # ours: checked on the header
        (10000, 10000, "over this server's limit of 16777216 pixels"),  # Pillow only warns: ours refuses
        (50000, 50000, "exceeds limit of"),  # Pillow's DecompressionBombError
    ],
)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_refused_from_the_header_alone(width: int, height: int, limit_text: str) -> None:
    filters_before = list(warnings.filters)
    start = time.perf_counter()
    error = _refusal(_png_with_declared_size(width, height))
    assert time.perf_counter() - start < 0.5  # nothing was inflated
    assert type(error) is InvalidImage and error.status_code == 422
    assert limit_text in error.message
    assert warnings.filters == filters_before  # the "error" filter did not leak


def test_max_pixels_is_the_callers_limit(lr_png: bytes) -> None:
    error = _refusal(lr_png, max_pixels=64 * 64 - 1)
    assert "64x64 = 4096 pixels, over this server's limit of 4095 pixels" in error.message


# --- DICOM -----------------------------------------------------------------------------------------------------


def test_dicom_monochrome2_8bit_round_trips_exactly(lr_gray: np.ndarray) -> None:
    decoded = decode_image(dicom_file(lr_gray), "application/dicom")
    assert decoded.source_format == "dicom" and decoded.conversion is None
    np.testing.assert_array_equal(decoded.pixels, lr_gray)


@pytest.mark.parametrize("content_type", [None, "application/octet-stream"])
def test_octet_stream_sniffsdicom_file(lr_gray: np.ndarray, content_type) -> None:
    decoded = decode_image(dicom_file(lr_gray), content_type)
    assert decoded.source_format == "dicom"
    np.testing.assert_array_equal(decoded.pixels, lr_gray)


def test_dicom_12bit_is_mapped_by_its_full_stored_range(lr_gray: np.ndarray) -> None:
    stored = lr_gray.astype(np.uint16) * 16 + 7  # 0..4087 of 0..4095
    decoded = decode_image(dicom_file(stored, bits_stored=12), "application/dicom")
    assert decoded.conversion == "full_range_rescaled"
    np.testing.assert_array_equal(decoded.pixels, np.rint(stored * (255 / 4095)).astype(np.uint8))


def _linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 written out as the standard states it, onto 0..255."""
    below = values <= center - 0.5 - (width - 1) / 2
    above = values > center - 0.5 + (width - 1) / 2
    inside = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.rint(np.where(below, 0, np.where(above, 255, inside))).astype(np.uint8)


def test_dicom_window_center_width_is_applied_first_value_first(lr_gray: np.ndarray) -> None:
    stored = lr_gray.astype(np.uint16) * 16
    data = dicom_file(stored, bits_stored=12, WindowCenter=[1500, 2048], WindowWidth=[1000, 4096])
    decoded = decode_image(data, "application/dicom")
    assert decoded.conversion == "window_applied"
    expected = _linear_window(stored.astype(np.float64), 1500, 1000)
    np.testing.assert_array_equal(decoded.pixels, expected)
    assert (decoded.pixels == 0).any() and (decoded.pixels == 255).any()  # the window clips both ends


def test_dicom_rescale_slope_intercept_come_before_the_window(lr_gray: np.ndarray) -> None:
    data = dicom_file(lr_gray, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=150, WindowWidth=301)
    decoded = decode_image(data, "application/dicom")
    expected = _linear_window(lr_gray.astype(np.float64) * 2 - 100, 150, 301)
    np.testing.assert_array_equal(decoded.pixels, expected)


def test_dicom_signed_pixels_map_by_the_signed_stored_range() -> None:
    stored = np.linspace(-2048, 2047, 64 * 64).round().astype(np.int16).reshape(64, 64)
    decoded = decode_image(dicom_file(stored, bits_stored=12, PixelRepresentation=1), "application/dicom")
    np.testing.assert_array_equal(decoded.pixels, np.rint((stored + 2048.0) * (255 / 4095)).astype(np.uint8))
    assert decoded.pixels.min() == 0 and decoded.pixels.max() == 255


@pytest.mark.parametrize(
    ("function", "width", "expected"),
    [
        ("LINEAR", 1, [0, 0, 255, 255]),  # width 1 is a threshold at center - 0.5
        ("LINEAR_EXACT", 4, [0, 64, 191, 255]),  # (x - c) / w + 0.5, clipped
        ("SIGMOID", 2, [0, 30, 225, 255]),  # 255 / (1 + exp(-4 (x - c) / w))
    ],
)
def test_dicom_voi_lut_functions(function: str, width: float, expected: list[int]) -> None:
    stored = np.full((64, 64), 100, dtype=np.uint8)
    stored[0, :4] = [0, 99, 101, 200]
    data = dicom_file(stored, WindowCenter=100, WindowWidth=width, VOILUTFunction=function)
    assert decode_image(data, "application/dicom").pixels[0, :4].tolist() == expected


def test_dicom_monochrome1_is_inverted(lr_gray: np.ndarray) -> None:
    decoded = decode_image(dicom_file(lr_gray, photometric="MONOCHROME1"), "application/dicom")
    assert decoded.conversion == "monochrome1_inverted"
    np.testing.assert_array_equal(decoded.pixels, 255 - lr_gray)


def test_dicom_wrong_rows_columns_is_wrong_size() -> None:
    error = _refusal(dicom_file(np.zeros((96, 128), dtype=np.uint8)), "application/dicom")
    assert isinstance(error, WrongSize) and error.message.startswith("expected a 64x64 image, got 128x96: ")


def test_dicom_rgb_is_refused(lr_gray: np.ndarray) -> None:
    rgb = np.stack([lr_gray] * 3, axis=-1)
    error = _refusal(dicom_file(rgb, photometric="RGB", samples_per_pixel=3), "application/dicom")
    assert isinstance(error, UnsupportedPixels) and "PhotometricInterpretation RGB" in error.message


def test_dicom_multiframe_is_refused(lr_gray: np.ndarray) -> None:
    data = dicom_file(lr_gray, pixel_data=lr_gray.tobytes() * 2, NumberOfFrames=2)
    error = _refusal(data, "application/dicom")
    assert isinstance(error, UnsupportedPixels) and "multi-frame DICOM with 2 frames" in error.message


def test_dicom_compressed_without_its_decoder_is_415_naming_the_syntax(lr_gray: np.ndarray) -> None:
    pytest.importorskip("pydicom")
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder plugin is installed")
    frame = encapsulate([b"\xff\xd8\xff\xf7 not decoded"])
    data = dicom_file(lr_gray, transfer_syntax=JPEGLSLossless, pixel_data=frame)
    error = _refusal(data, "application/dicom")
    assert type(error) is UnsupportedMediaType
    assert error.message.startswith(
        "DICOM transfer syntax JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80) cannot be decoded by "
        "this server: no decoder plugin for it is installed (gdcm - requires"
    )


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the garbage before refusing it
def test_garbage_after_dicm_is_invalid() -> None:
    pytest.importorskip("pydicom", reason="DICOM input needs pydicom")
    garbage = bytes(random.Random(1).randrange(256) for _ in range(400))
    error = _refusal(b"\0" * 128 + b"DICM" + garbage, "application/dicom")
    assert type(error) is InvalidImage and error.status_code == 422


def test_dicom_without_pixel_data_is_invalid(lr_gray: np.ndarray) -> None:
    pydicom = pytest.importorskip("pydicom")
    dataset = pydicom.dcmread(BytesIO(dicom_file(lr_gray)))
    del dataset.PixelData
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    error = _refusal(buffer.getvalue(), "application/dicom")
    assert type(error) is InvalidImage
    assert error.message == "the DICOM file has no PixelData element: it is not an image"


def test_png_sent_as_dicom_says_what_it_looks_like(lr_png: bytes) -> None:
    pytest.importorskip("pydicom")
    error = _refusal(lr_png, "application/dicom")
    assert type(error) is InvalidImage and error.message.startswith("not a readable DICOM file (it looks like a PNG)")


def test_dicom_without_pydicom_installed_is_415(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydicom", None)  # makes "import pydicom" raise ImportError
    error = _refusal(b"\0" * 128 + b"DICM", "application/dicom")
    assert isinstance(error, UnsupportedMediaType) and "pip install pydicom" in error.message


# --- encode_png ------------------------------------------------------------------------------------------------


def test_encode_png_round_trips_exactly(lr_gray: np.ndarray) -> None:
    hr_like = np.random.default_rng(0).integers(0, 256, size=(256, 256), dtype=np.uint8)
    for pixels in (lr_gray, hr_like, hr_like[::2, ::2]):  # the last is not C-contiguous
        data = encode_png(pixels)
        with Image.open(BytesIO(data)) as image:
            assert image.format == "PNG" and image.mode == "L"
        side = pixels.shape[0]
        np.testing.assert_array_equal(decode_image(data, "image/png", expected_size=side).pixels, pixels)


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((64, 64), dtype=np.float32),
        np.zeros((64, 64, 3), dtype=np.uint8),
        np.zeros((64, 64), dtype=np.uint16),
        np.zeros((0, 64), dtype=np.uint8),
        [[0, 1], [2, 3]],
    ],
    ids=["float", "3-d", "uint16", "empty", "list"],
)
def test_encode_png_takes_only_2d_uint8(pixels) -> None:
    with pytest.raises(ValueError, match="encode_png takes a non-empty 2-D uint8 array"):
        encode_png(pixels)


# --- fuzz: malformed input raises ImageError and nothing else ------------------------------------------------


def _decode_or_refuse(data: bytes, content_type: str | None) -> None:
    """Decoding may succeed (a flipped bit in pixel data) or raise an ImageError; anything else fails the test."""
    try:
        decoded = decode_image(data, content_type)
    except ImageError:
        return
    assert decoded.pixels.shape == (64, 64) and decoded.pixels.dtype == np.uint8


def _bit_flips(data: bytes, rng: random.Random, cases: int, within: int | None = None) -> list[bytes]:
    """``cases`` copies of ``data`` with 1 to 3 random bits flipped in its first ``within`` bytes."""
    flipped = []
    for _ in range(cases):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            position = rng.randrange(within or len(mutated))
            mutated[position] ^= 1 << rng.randrange(8)
        flipped.append(bytes(mutated))
    return flipped


def test_fuzzed_png_raises_only_image_errors(lr_png: bytes) -> None:
    rng = random.Random(0)
    signature = b"\x89PNG\r\n\x1a\n"
    random_tails = [signature + rng.randbytes(rng.randrange(0, 300)) for _ in range(100)]
    ihdr_tails = [lr_png[:33] + rng.randbytes(rng.randrange(0, 200)) for _ in range(50)]  # valid header, junk after
    truncations = [lr_png[:end] for end in range(0, len(lr_png), 7)]
    for data in random_tails + ihdr_tails + truncations + _bit_flips(lr_png, rng, 200):
        for content_type in ("image/png", None):
            _decode_or_refuse(data, content_type)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about every invalid value it meets
def test_fuzzed_dicom_raises_only_image_errors(lr_gray: np.ndarray) -> None:
    rng = random.Random(0)
    valid = dicom_file(lr_gray.astype(np.uint16) * 16, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    random_tails = [b"\0" * 128 + b"DICM" + rng.randbytes(rng.randrange(0, 300)) for _ in range(50)]
    truncations = [valid[:end] for end in range(0, len(valid), 37)]
    header_end = valid.index(b"\xe0\x7f\x10\x00")  # the (7FE0,0010) Pixel Data tag
    for data in random_tails + truncations + _bit_flips(valid, rng, 200, within=header_end + 12):
        _decode_or_refuse(data, "application/dicom")
    for data in _bit_flips(valid, rng, 50):
        _decode_or_refuse(data, None)
