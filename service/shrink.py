"""`xraysr shrink` and POST /shrink: a full-size chest X-ray → the 64×64 input xraysr upscales, made exactly the
way the training pairs were (training/prepare.py), so that the model sees what it was trained on.

The recipe, in order:
1. Decode to 8-bit grayscale (service/imaging.py: PNG or DICOM, any size up to the decompression-bomb limit).
2. The largest centred square; the longer side loses equal margins, an odd pixel from its far end
   (training/prepare_images.center_square).
3. INTER_AREA to 256×256: each output pixel the mean of the source pixels under it (training's HR_256).
4. INTER_CUBIC 256 → 64 (training's LR_64).
Both resizes are OpenCV's, bit for bit, in numpy (service/resize.py): shrinking a raw NIH ChestX-ray14 PNG
gives the very bytes `xraysr prepare` wrote as its LR_64 (tests/service/test_shrink.py).

An image whose short side is under 256 is refused: the recipe never enlarges (`xraysr prepare` drops such
images as too_small), so there is no training-faithful way to make a 64×64 input from it.

Where the recipe and the service's decoder differ: a 16-bit PNG is mapped to 8 bits over the full 16-bit range
here (what /upscale does with one), while `xraysr prepare` stretches each 16-bit image min-to-max.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xraysr.service import __version__
from xraysr.service.image_errors import ANY_SIZE, InvalidImage
from xraysr.service.imaging import DecodedImage, decode_image, encode_png
from xraysr.service.resize import resize_area, resize_cubic

HR_SIZE = 256
LR_SIZE = 64
RECIPE = "centre-square, area to 256, cubic to 64"
MAX_PIXELS = 4096 * 4096  # the decoders' decompression-bomb limit: 16 MiB of 8-bit pixels at most


class TooSmall(InvalidImage):
    """An image the recipe cannot shrink without first enlarging it: 422."""


def center_square(pixels: np.ndarray) -> np.ndarray:
    """The largest centred square, as training/prepare_images.center_square takes it (tests compare the two)."""
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return pixels[top : top + side, left : left + side]


def shrink(pixels: np.ndarray, hr_size: int = HR_SIZE, lr_size: int = LR_SIZE) -> np.ndarray:
    """A 2-D uint8 X-ray of any size with a short side of at least ``hr_size`` → its ``lr_size``² uint8 input."""
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2:
        shape, dtype = getattr(pixels, "shape", None), getattr(pixels, "dtype", type(pixels).__name__)
        raise ValueError(f"shrink takes a 2-D uint8 array (H x W); got shape {shape}, dtype {dtype}")
    height, width = pixels.shape
    if min(height, width) < hr_size:
        raise TooSmall(
            f"the image is {width}x{height}; shrinking needs a short side of at least {hr_size} pixels, because "
            f"the training recipe ({RECIPE}) never enlarges"
            + (
                f" (a {lr_size}x{lr_size} image is already the model's input size)"
                if height == width == lr_size
                else ""
            )
        )
    high_resolution = resize_area(np.ascontiguousarray(center_square(pixels)), hr_size, hr_size)
    return resize_cubic(high_resolution, lr_size, lr_size)


def decode_any_size(data: bytes, content_type: str | None) -> DecodedImage:
    """A PNG or DICOM body of any size up to ``MAX_PIXELS``, decoded as /upscale decodes its input."""
    return decode_image(data, content_type, expected_size=ANY_SIZE, max_pixels=MAX_PIXELS)


@dataclass(frozen=True, eq=False)
class ShrunkImage:
    png: bytes  # lr_size² 8-bit grayscale, with Software and Description text chunks
    pixels: np.ndarray  # the same, uint8
    original_width: int
    original_height: int
    conversion: str | None  # what decoding did (DecodedImage.conversion)


def shrink_file(data: bytes, content_type: str | None) -> ShrunkImage:
    """A PNG or DICOM file's bytes → the model's input as a PNG: what `xraysr shrink` writes and /shrink answers.
    Raises an ``ImageError`` (with its HTTP status) for anything that cannot be shrunk."""
    decoded = decode_any_size(data, content_type)
    height, width = decoded.pixels.shape
    small = shrink(decoded.pixels)
    text = {
        "Software": f"xraysr {__version__}",
        "Description": f"{LR_SIZE}x{LR_SIZE} input for xraysr made from a {width}x{height} image: {RECIPE}",
    }
    return ShrunkImage(encode_png(small, text), small, width, height, decoded.conversion)
