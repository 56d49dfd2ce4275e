"""What the PNG reader (imaging.py) and the DICOM reader and writer (dicom.py, dicom_out.py) share: the refusals,
each an ``ImageError`` carrying its HTTP status, and the header checks that raise them.

Kept apart so that DICOM handling never imports PNG handling back, nor PNG handling DICOM's.
"""

from __future__ import annotations

import struct
import zlib
from io import BytesIO
from typing import ClassVar

from PIL import Image, UnidentifiedImageError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DICOM_MAGIC = b"DICM"
DICOM_MAGIC_OFFSET = 128  # PS3.10 7.1: a 128-byte preamble, then "DICM"

# What Pillow raises on hostile bytes: decoder failures are OSError, header parsing raises the rest.
PILLOW_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError, KeyError, TypeError)
# pydicom converts element values lazily, so any attribute access on a parsed file can raise these.
DICOM_ERRORS = PILLOW_ERRORS + (AttributeError, NotImplementedError, RuntimeError, OverflowError)


class ImageError(ValueError):
    """A request body the service refuses; ``status_code`` is the HTTP answer, ``message`` the reason."""

    status_code: ClassVar[int] = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EmptyBody(ImageError):
    status_code = 400


class BodyTooLarge(ImageError):
    status_code = 413


class BodyTimeout(ImageError):
    status_code = 408


class UnsupportedMediaType(ImageError):
    status_code = 415


class InvalidImage(ImageError):
    """Not an image, corrupt, truncated, a decompression bomb or a broken DICOM: 422 Unprocessable Content."""

    status_code = 422


class WrongSize(InvalidImage):
    """Not the expected square size; ``size`` is the (width, height) received."""

    def __init__(self, message: str, size: tuple[int, int]) -> None:
        super().__init__(message)
        self.size = size


class UnsupportedPixels(InvalidImage):
    pass


class NotAcceptable(ImageError):
    """The answer asked for (Accept) cannot be made from this input."""

    status_code = 406


def is_dicom_file(data: bytes) -> bool:
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)] == DICOM_MAGIC


def looks_like(data: bytes) -> str | None:
    """A name for what a body seems to be, so that a refusal can say what it got."""
    if data.startswith(PNG_SIGNATURE):
        return "a PNG"
    if is_dicom_file(data):
        return "a DICOM file"
    if data.startswith(b"\xff\xd8\xff"):
        return "a JPEG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "a GIF"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "a TIFF"
    if data.startswith(b"BM"):
        return "a BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "a WebP"
    if data.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n"):
        return "a JPEG 2000"
    try:
        data[:512].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "text"


ANY_SIZE = 0  # expected_size for readers that take any size (POST /shrink); the pixel-count limit still holds


def check_size(width: int, height: int, expected_size: int) -> None:
    """``WrongSize`` (422) unless the image is ``expected_size`` square; the message says who the model is for and
    how to make its input, because a full-size X-ray is the usual mistake."""
    if expected_size == ANY_SIZE or (width, height) == (expected_size, expected_size):
        return
    who = "xraysr enlarges 4x chest X-rays of exactly that size (thumbnails, downsampled archives)"
    if width >= expected_size and height >= expected_size:
        how = "make one from a full-size image with `xraysr shrink IN -o OUT` or POST /shrink"
    else:
        how = "this one is smaller, and enlarging it would not give the model what it was trained on"
    raise WrongSize(
        f"expected a {expected_size}x{expected_size} image, got {width}x{height}: {who}; {how}", (width, height)
    )


def check_pixel_count(width: int, height: int, frames: int, max_pixels: int) -> None:
    if width * height * frames > max_pixels:
        raise InvalidImage(
            f"the header declares {width}x{height}{f' x {frames} frames' if frames > 1 else ''} = "
            f"{width * height * frames} pixels, over this server's limit of {max_pixels} pixels "
            "(decompression-bomb guard); nothing was decoded"
        )


def open_image_header(data: bytes, formats: tuple[str, ...] | None, what: str) -> Image.Image:
    """Pillow's lazy open: the header is parsed and the size known, but no pixel is decoded yet.

    No lock and no warnings filter: requests parse headers in parallel threads. Pillow's own bomb check only
    warns below twice its MAX_IMAGE_PIXELS (89 M), far above the callers' ``check_pixel_count`` limits, which
    refuse such an image right after this, before any pixel is decoded."""
    try:
        image = Image.open(BytesIO(data), formats=formats)
    except Image.DecompressionBombError as error:
        raise InvalidImage(f"decompression bomb refused before decoding: {error}") from error
    except UnidentifiedImageError as error:
        raise InvalidImage(f"corrupt {what}: its header cannot be read") from error
    except PILLOW_ERRORS as error:
        raise InvalidImage(f"corrupt {what} header: {error}") from error
    return image
