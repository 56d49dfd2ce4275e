"""What `xraysr quantize` measures with: image pairs, runtimes over explicit ONNX files, and the calibration data.

The calibration data is what each component really sees when serving: the FP32 service pipeline runs on the
calibration images through a ``RecordingRuntime``, so the loop that produces the UNet's inputs is the service's
own and cannot drift from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from xraysr.service.manifest import COMPONENTS, Manifest
from xraysr.service.pipeline import AnswerPlan, SRPipeline
from xraysr.service.runtimes import NO_DEVICE_TIME, Runtime
from xraysr.service.runtimes.onnxruntime import create_session
from xraysr.training.data import read_splits
from xraysr.training.metrics import psnr, ssim


@dataclass
class Pair:
    filename: str
    lr: np.ndarray  # uint8 lr_size²
    hr: np.ndarray  # uint8 hr_size²


def load_pairs(data_root: Path, split: str, limit: int | None = None) -> list[Pair]:
    rows = [row for row in read_splits(data_root) if row.split == split][:limit]
    if not rows:
        raise ValueError(f"{data_root}/splits.csv has no {split!r} images")
    return [
        Pair(
            row.filename,
            np.array(Image.open(data_root / "LR_64" / row.filename)),
            np.array(Image.open(data_root / "HR_256" / row.filename)),
        )
        for row in rows
    ]


class RecordingRuntime:
    """A Runtime that records every component's inputs on the way to the real one (calibration data)."""

    backend = "recording"

    def __init__(self, inner: Runtime) -> None:
        self.inner = inner
        self.inputs: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in COMPONENTS}

    @property
    def last_gpu_seconds(self) -> Mapping[str, float]:
        return self.inner.last_gpu_seconds

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        self.inputs[component].append({name: value.copy() for name, value in inputs.items()})
        return self.inner.run(component, inputs)

    def close(self) -> None:
        self.inner.close()


class FileRuntime:
    """A Runtime over explicit ONNX files, so a candidate INT8 file can stand in for one component."""

    backend = "onnxruntime"

    def __init__(self, manifest: Manifest, files: dict[str, Path]) -> None:
        self._sessions = {name: create_session(files[name]) for name in COMPONENTS}
        self._outputs = {name: manifest.components[name].outputs[0].name for name in COMPONENTS}

    @property
    def last_gpu_seconds(self) -> Mapping[str, float]:
        return NO_DEVICE_TIME

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        (output,) = self._sessions[component].run([self._outputs[component]], inputs)
        return output

    def close(self) -> None:
        self._sessions.clear()


def answer_all(pipeline: SRPipeline, pairs: list[Pair], plan: AnswerPlan, seed: int) -> list[np.ndarray]:
    # One seed for every image, as `xraysr evaluate-served --seed` sends it, so the numbers compare.
    return [pipeline.answer(pair.lr, plan, seed).image for pair in pairs]


def score(images: list[np.ndarray], pairs: list[Pair]) -> dict[str, float]:
    return {
        "psnr": float(np.mean([psnr(image, pair.hr) for image, pair in zip(images, pairs, strict=True)])),
        "ssim": float(np.mean([ssim(image, pair.hr) for image, pair in zip(images, pairs, strict=True)])),
    }


def record_calibration(
    manifest: Manifest, fp32_files: dict[str, Path], pairs: list[Pair], plan: AnswerPlan, loop: AnswerPlan, seed: int
) -> tuple[list[np.ndarray], dict[str, list[dict[str, np.ndarray]]]]:
    """The FP32 pipeline's ``plan`` answers on ``pairs``, and every component's inputs while it answered them and,
    when the loop is another plan, while it ran ``loop`` on them too (each DDIM step's UNet inputs)."""
    recorder = RecordingRuntime(FileRuntime(manifest, fp32_files))
    fp32_answers = answer_all(SRPipeline(manifest, recorder), pairs, plan, seed)
    if plan != loop:
        answer_all(SRPipeline(manifest, recorder), pairs, loop, seed)
    return fp32_answers, recorder.inputs
