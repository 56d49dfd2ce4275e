"""The shipped engines/cxr-default, FP32 and INT8: each contract verifies and upscales a real chest X-ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHARED_DATA
from xraysr.service.manifest import load_manifest
from xraysr.service.pipeline import SRPipeline
from xraysr.service.runtimes import load_runtime

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "engines" / "cxr-default"


def test_the_shipped_files_stay_under_40_mb() -> None:
    assert sum(path.stat().st_size for path in DEFAULT_MODEL.iterdir()) < 40e6


@pytest.mark.parametrize(("precision", "unet_file"), [("fp32", "unet.onnx"), ("int8", "unet.int8.onnx")])
def test_the_shipped_model_verifies_and_upscales_a_real_xray(precision: str, unet_file: str) -> None:
    manifest = load_manifest(DEFAULT_MODEL, precision)  # every sha256 checked
    assert (manifest.model, manifest.precision) == ("cxr-default", precision)
    assert manifest.components["unet"].path == unet_file
    assert (manifest.sampler.min_steps, manifest.sampler.default_steps, manifest.sampler.max_steps) == (10, 25, 50)
    # docs/RESULTS.md chose these on validation images: the loop runs to t = 0 (real samples, since 3.1.0) and
    # averages 4.
    assert (manifest.sampler.final_timestep, manifest.sampler.default_samples) == (0, 4)
    lr_path = SHARED_DATA / "cxr" / "LR_64" / "ieee8023_183_0.png"
    if not lr_path.is_file():
        pytest.skip(f"needs ../shared/data: the CXR X-ray the model is measured on (not found at {lr_path.parent})")
    pipeline = SRPipeline(manifest, load_runtime("onnxruntime", manifest, DEFAULT_MODEL))
    lr = np.array(Image.open(lr_path))
    result = pipeline.upscale(lr, steps=10, seed=0)
    assert result.image.shape == (256, 256) and result.image.dtype == np.uint8
    # A 4×4 box average of the output must come back close to the input it was made from.
    pooled = result.image.reshape(64, 4, 64, 4).mean(axis=(1, 3))
    assert np.abs(pooled - lr).mean() < 3.0
