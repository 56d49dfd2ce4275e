"""Fixtures for the service tests: settings for the tiny real engine, LR X-rays (tests/xrays.py), and hostile PNGs."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import xrays
from xraysr.service.manifest import read_manifest, write_manifest
from xraysr.service.settings import Settings, load_settings

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "engines" / "cxr-default"


@pytest.fixture
def model_with_int8(tmp_path: Path) -> Path:
    """The default model's files and manifest.json, plus a manifest.int8.json of encoder, unet and decoder (no
    step graph) whose UNet is marked int8, as `xraysr quantize` records it: the encoder and decoder stay float."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for file in DEFAULT_MODEL.iterdir():
        (model_dir / file.name).symlink_to(file)
    shipped = read_manifest(DEFAULT_MODEL, "int8")
    components = {name: shipped.components[name] for name in ("encoder", "unet", "decoder")}
    components["unet"] = components["unet"].model_copy(update={"precision": "int8"})
    write_manifest(shipped.model_copy(update={"components": components}), model_dir, "int8")
    return model_dir


@pytest.fixture(scope="session")
def engine_settings(tiny_engine_dir: Path) -> Settings:
    return load_settings(engines_dir=tiny_engine_dir.parent, model=tiny_engine_dir.name)


@pytest.fixture(scope="session")
def lr_png_paths() -> list[Path]:
    return xrays.lr_paths()[:3]


@pytest.fixture(scope="session")
def lr_png(lr_png_paths: list[Path]) -> bytes:
    """A 64×64 8-bit grayscale chest X-ray (the suite's own: tests/xrays.py)."""
    return lr_png_paths[0].read_bytes()


def png_of(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring width×height 8-bit grayscale, with a few bytes of IDAT behind it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + _chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def make_png() -> Callable[[np.ndarray], bytes]:
    return png_of


@pytest.fixture(scope="session")
def make_bomb_png() -> Callable[[int, int], bytes]:
    return bomb_png
