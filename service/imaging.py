"""PNG and DICOM bytes in and out: what the service accepts, what it refuses, and why.

Every refusal is an ``ImageError`` subclass carrying the HTTP ``status_code`` the route answers with and a
``message`` written for the person who has to fix the sending system. Sizes are written WIDTHxHEIGHT.

Rules (decode_image):
1. Body: an empty body is 400 (``EmptyBody``); the body-size limit is the caller's (``check_body_size``, 413).
2. Content type (parameters after ``;`` ignored, case-insensitive): ``image/png`` is read as PNG,
   ``application/dicom`` as DICOM; no type or ``application/octet-stream`` is sniffed (PNG signature, or "DICM"
   at byte 128). Anything else, or an octet-stream that is neither, is 415 (``UnsupportedMediaType``).
3. PNG: only Pillow's PNG reader is used; a body that is not a PNG (a JPEG sent as image/png, text) is 422.
   The header is checked before any pixel is decoded: width x height over ``max_pixels`` (default 4096x4096)
   is refused as a decompression bomb, then the size must be exactly ``expected_size`` square (``WrongSize``,
   422, naming the size received). Animated PNGs are refused. A corrupt or truncated PNG is 422.
4. PNG pixels: 8-bit grayscale (mode L) is used as is. 16-bit grayscale is mapped to 8 bits over the full
   16-bit range (round(value * 255 / 65535)), not min-max: min-max would re-window every image differently.
   RGB, RGBA, LA and palette images are accepted only when they are grayscale stored as colour (after
   compositing any alpha on black, no channel differs from another by more than 2 levels), and become ITU-R 601
   luma, exactly as the training data was made. Real colour, 1-bit and floating-point images are refused (422).
5. DICOM (needs pydicom; without it, 415): a Part 10 file ("DICM" at byte 128), one frame, Rows and Columns equal
   to ``expected_size``, SamplesPerPixel 1, MONOCHROME1 or MONOCHROME2, 8 or 16 bits allocated. Colour,
   multi-frame and Modality LUT Sequence images are refused (422); a transfer syntax that cannot be decoded here
   (unknown, or its decoder plugin not installed) is 415, naming the syntax and what is missing.
6. DICOM pixels: RescaleSlope/RescaleIntercept are applied, then the first WindowCenter/WindowWidth pair is
   applied (PS3.3 C.11.2.1.2: LINEAR, LINEAR_EXACT or SIGMOID) when the file has one; otherwise the full stored
   range (0 .. 2^BitsStored - 1, or the signed range) is mapped onto 0..255. MONOCHROME1 is then inverted so
   that bone is always bright. An 8-bit MONOCHROME2 file without a window comes through unchanged.
7. ``DecodedImage.conversion`` records what was done: None (used as is), "16bit_rescaled", "rgb_to_luma",
   "rgba_to_luma", "la_to_luma", "palette_to_luma" (PNG); "full_range_rescaled" or "window_applied", with
   "+monochrome1_inverted" appended when inverted, or "monochrome1_inverted" alone (DICOM).

encode_png writes a 2-D uint8 array as an 8-bit grayscale PNG (zlib level 3: fast, still small at 256x256).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Literal

import numpy as np
from PIL import Image, PngImagePlugin

from xraysr.service.codec_limits import check_png_chunks
from xraysr.service.dicom import decode_dicom
from xraysr.service.image_errors import (  # noqa: F401 - the refusals are imaging's API too
    PILLOW_ERRORS,
    PNG_SIGNATURE,
    BodyTimeout,
    BodyTooLarge,
    EmptyBody,
    ImageError,
    InvalidImage,
    UnsupportedMediaType,
    UnsupportedPixels,
    WrongSize,
    check_pixel_count,
    check_size,
    is_dicom_file,
    looks_like,
    open_image_header,
)

ACCEPTED_CONTENT_TYPES = ("image/png", "application/dicom")
SNIFFED_CONTENT_TYPES = ("application/octet-stream",)
MAX_CHANNEL_DIFFERENCE = 2  # levels; grayscale saved as RGB by JPEG-era tools drifts by a level or two
PNG_COMPRESS_LEVEL = 3
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
COLOUR_MODE_CONVERSIONS = {
    "RGB": "rgb_to_luma",
    "RGBA": "rgba_to_luma",
    "LA": "la_to_luma",
    "P": "palette_to_luma",
    "PA": "palette_to_luma",
}
SourceFormat = Literal["png", "dicom"]

# Pillow inflates compressed text chunks (zTXt, iTXt) up to 1 MB each and 64 MB per image; an X-ray needs none
# of them, and a 1 MiB body of many small chunks must not become 64 MB.
PngImagePlugin.MAX_TEXT_CHUNK = 64 << 10
PngImagePlugin.MAX_TEXT_MEMORY = 256 << 10


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarrays field-wise has no single truth value
class DecodedImage:
    pixels: np.ndarray  # uint8, H x W, range [0, 255], read-only
    source_format: SourceFormat
    conversion: str | None


def check_body_size(size_bytes: int, max_bytes: int) -> None:
    """Raise ``BodyTooLarge`` (413) when a body (or its Content-Length) exceeds ``max_bytes``."""
    if size_bytes > max_bytes:
        raise BodyTooLarge(f"the request body is {size_bytes} bytes; this server accepts at most {max_bytes} bytes")


def decode_image(
    data: bytes, content_type: str | None, expected_size: int = 64, max_pixels: int = 4096 * 4096
) -> DecodedImage:
    """Decode a PNG or DICOM body into an ``expected_size`` square uint8 array, or raise an ``ImageError``."""
    if not data:
        raise EmptyBody("the request body is empty: send the image file's bytes")
    if _source_format(data, content_type) == "png":
        pixels, conversion = _decode_png(data, expected_size, max_pixels)
        source_format: SourceFormat = "png"
    else:
        pixels, conversion = decode_dicom(data, expected_size, max_pixels)
        source_format = "dicom"
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8).copy()
    pixels.setflags(write=False)
    return DecodedImage(pixels=pixels, source_format=source_format, conversion=conversion)


def encode_png(pixels: np.ndarray, text: Mapping[str, str] | None = None) -> bytes:
    """Write a 2-D uint8 array (range [0, 255]) as an 8-bit grayscale PNG, with ``text`` as tEXt/iTXt chunks
    (service/provenance.py). A wrong array is a ValueError."""
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.size == 0:
        shape, dtype = getattr(pixels, "shape", None), getattr(pixels, "dtype", type(pixels).__name__)
        raise ValueError(f"encode_png takes a non-empty 2-D uint8 array (H x W); got shape {shape}, dtype {dtype}")
    info = PngImagePlugin.PngInfo()
    for keyword, value in (text or {}).items():
        info.add_text(keyword, value)  # Latin-1 values become tEXt, others iTXt (UTF-8)
    buffer = BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(
        buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, pnginfo=info
    )
    return buffer.getvalue()


def _source_format(data: bytes, content_type: str | None) -> SourceFormat:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type == "image/png":
        return "png"
    if media_type == "application/dicom":
        return "dicom"
    accepted = " or ".join(ACCEPTED_CONTENT_TYPES)
    if media_type and media_type not in SNIFFED_CONTENT_TYPES:
        raise UnsupportedMediaType(
            f"content type {media_type!r} is not supported: send {accepted} "
            "(or application/octet-stream to have the format detected)"
        )
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if is_dicom_file(data):
        return "dicom"
    received = looks_like(data)
    raise UnsupportedMediaType(
        f"could not recognise the body{' (it looks like ' + received + ')' if received else ''}: "
        f"it is neither a PNG nor a DICOM file with 'DICM' at byte 128; send {accepted}"
    )


# --- PNG -------------------------------------------------------------------------------------------------------


def _decode_png(data: bytes, expected_size: int, max_pixels: int) -> tuple[np.ndarray, str | None]:
    if not data.startswith(PNG_SIGNATURE):
        received = looks_like(data)
        raise InvalidImage(f"the body is not a PNG{' (it looks like ' + received + ')' if received else ''}")
    # 1. Chunks counted, then the header only: format, size, frames and mode are known before a pixel is inflated.
    check_png_chunks(data)
    image = _open_png_header(data)
    with image:
        if image.format != "PNG":  # formats=("PNG",) already guarantees it; kept as the stated contract
            raise InvalidImage(f"the body is not a PNG (it was read as {image.format})")
        width, height = image.size
        check_pixel_count(width, height, 1, max_pixels)
        check_size(width, height, expected_size)
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            raise UnsupportedPixels(f"animated PNG with {frames} frames: xraysr takes a single still image")
        if image.mode not in ("L", *SIXTEEN_BIT_MODES, *COLOUR_MODE_CONVERSIONS):
            raise UnsupportedPixels(_refused_mode_message(image.mode))
        # 2. Decode every byte now, so that a truncated file fails here and not half-way through the model.
        try:
            image.load()
        except PILLOW_ERRORS as error:
            raise InvalidImage(f"corrupt or truncated PNG: {error}") from error
        # 3. Map the pixel format to 8-bit grayscale.
        return _png_to_gray8(image)


def _open_png_header(data: bytes) -> Image.Image:
    return open_image_header(data, formats=("PNG",), what="PNG")


def _refused_mode_message(mode: str) -> str:
    if mode == "1":
        return "1-bit (black and white) image: xraysr takes 8- or 16-bit grayscale X-rays"
    if mode == "F":
        return "floating-point image: xraysr takes 8- or 16-bit grayscale X-rays"
    return f"pixel format {mode}: xraysr takes 8- or 16-bit grayscale X-rays"


def _png_to_gray8(image: Image.Image) -> tuple[np.ndarray, str | None]:
    mode = image.mode
    if mode == "L":
        return np.asarray(image), None
    if mode in SIXTEEN_BIT_MODES:
        return rescale_16bit(np.asarray(image)), "16bit_rescaled"
    try:
        # Grayscale stored as colour: composite alpha on black, then luma, as training/prepare.py made the data.
        if mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
            conversion = "rgba_to_luma" if mode == "RGB" else COLOUR_MODE_CONVERSIONS[mode]
        else:
            conversion = COLOUR_MODE_CONVERSIONS[mode]
        rgb = image.convert("RGB")
        channels = np.asarray(rgb, dtype=np.int16)
        luma = np.asarray(rgb.convert("L"))  # ITU-R 601-2: L = R * 299/1000 + G * 587/1000 + B * 114/1000
    except PILLOW_ERRORS as error:
        raise InvalidImage(f"corrupt PNG: its pixels cannot be converted: {error}") from error
    difference = int(np.abs(channels - np.roll(channels, 1, axis=-1)).max())  # |R-B|, |G-R|, |B-G|
    if difference > MAX_CHANNEL_DIFFERENCE:
        raise UnsupportedPixels(
            f"colour image: xraysr takes grayscale X-rays (its colour channels differ by up to {difference} "
            f"levels; grayscale saved as colour is accepted when they differ by at most {MAX_CHANNEL_DIFFERENCE})"
        )
    return luma, conversion


def rescale_16bit(values: np.ndarray) -> np.ndarray:
    """16-bit grayscale → 8 bits over the full 16-bit range (rule 4), as /upscale maps a 16-bit PNG."""
    # The full 16-bit range, not min-max: min-max would stretch every image to its own window.
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise UnsupportedPixels(f"pixel values {low}..{high} do not fit 16-bit grayscale (0..65535)")
    return np.rint(values.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
