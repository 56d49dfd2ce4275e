"""How `xraysr prepare` reads one X-ray: decode to 8-bit grayscale, check its quality, take the centre square."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

MIN_STD = 2.0  # on [0, 255]: below this an image is blank (a failed export, an empty frame)
MAX_CHANNEL_DIFFERENCE = 2.0  # mean |R-G|, |G-B|, |B-R| on [0, 255]: above this it is a colour picture
MAX_ASPECT_RATIO = 1.5  # long/short: beyond this the centre square cuts away too much of the chest


class DroppedImage(Exception):
    """An image that fails a quality check; ``reason`` is one of ``prepare.DROP_REASONS``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def load_grayscale(path: Path) -> tuple[np.ndarray, str | None]:
    """Decode an X-ray into an 8-bit grayscale array with range [0, 255], EXIF orientation applied.

    Returns the array and its conversion: None (8-bit grayscale already), ``"16bit"`` (high bit depth, min-max
    rescaled) or ``"rgb"`` (a colour-model or alpha image that is really grayscale: alpha composited on black,
    then ITU-R 601 luma, Pillow's ``convert("L")``). Raises ``DroppedImage``: unreadable, colour or blank.
    """
    try:
        with Image.open(path) as opened:
            opened.load()  # decode every byte now, so a truncated file fails here
            image = ImageOps.exif_transpose(opened)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DroppedImage("unreadable", f"{path.name}: {error}") from error
    conversion: str | None = None
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels, conversion = _rescale_to_8bit(np.asarray(image)), "16bit"
    elif image.mode in ("L", "1"):
        pixels = np.asarray(image.convert("L"))
    else:
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        rgb = image.convert("RGB")
        channels = np.asarray(rgb, dtype=np.int16)
        difference = np.abs(channels - np.roll(channels, 1, axis=-1)).mean()  # |R-B|, |G-R|, |B-G|
        if difference > MAX_CHANNEL_DIFFERENCE:
            raise DroppedImage("colour", f"{path.name}: mean inter-channel difference {difference:.2f}")
        pixels, conversion = np.asarray(rgb.convert("L")), "rgb"
    if pixels.std() < MIN_STD:
        raise DroppedImage("blank", f"{path.name}: std {pixels.std():.2f}")
    return pixels, conversion


def _rescale_to_8bit(pixels: np.ndarray) -> np.ndarray:
    # Min-max, not a fixed >> 8: 12-bit data stored in 16 bits would otherwise fill a sixteenth of the range.
    low, high = float(pixels.min()), float(pixels.max())
    if high == low:
        return np.zeros(pixels.shape, dtype=np.uint8)
    return np.round((pixels.astype(np.float64) - low) * (255.0 / (high - low))).astype(np.uint8)


def check_shape(height: int, width: int, hr_size: int) -> None:
    """Raise ``DroppedImage`` for ``too_small`` (a target is never upsampled) or ``not_squareable``."""
    short, long = sorted((height, width))
    if short < hr_size:
        raise DroppedImage("too_small", f"{width}x{height}, short side under {hr_size}")
    if long / short > MAX_ASPECT_RATIO:
        raise DroppedImage("not_squareable", f"{width}x{height}, aspect ratio over {MAX_ASPECT_RATIO}")


def center_square(pixels: np.ndarray) -> np.ndarray:
    """The largest centred square: the longer side loses equal margins (an odd pixel from its far end)."""
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return pixels[top : top + side, left : left + side]
