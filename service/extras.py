"""Which optional dependencies each `xraysr` command needs, checked before the command does any work.

The base install serves; training, evaluation and benchmarking need extras, and the TensorRT backend needs
NVIDIA's bindings, which no extra can install. A command run without what it needs ends with one line naming
what to install, instead of a traceback (or, worse, a traceback after minutes of work).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass

# torch's CPU build is pinned through the repository's constraints file; without it pip takes a CUDA build.
INSTALL_HINT = {
    "train": "pip install 'xraysr[train]' (from a checkout: pip install -c constraints.txt '.[train]')",
    "bench": "pip install 'xraysr[bench]'",
    "ray": "pip install 'xraysr[ray]'",
}
TENSORRT_HINT = (
    "no pip extra installs them: use JetPack's TensorRT (apt install python3-libnvinfer) and `pip install pycuda` "
    "on the Jetson, or the Jetson image (docker/Dockerfile.jetson); --backend onnxruntime serves on any CPU"
)

# What the training extra's commands import (training/*.py), so that a partial install names what is missing.
TRAINING = ("torch", "diffusers", "accelerate", "cv2", "skimage", "scipy")
SCORING = ("cv2", "skimage", "scipy")
# Import names that are not the names pip knows them by.
DISTRIBUTION = {"cv2": "opencv-python-headless", "skimage": "scikit-image", "tensorrt": "TensorRT's Python bindings"}


class MissingDependencyError(ValueError):
    """A command's optional dependency is not installed; the message is one line saying how to install it."""


@dataclass(frozen=True)
class Needs:
    modules: tuple[str, ...]
    install: str  # the rest of the sentence: an extra's pip line, or where the modules come from
    why: str = ""


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (importing torch alone takes seconds)."""
    if module in sys.modules:
        return sys.modules[module] is not None  # None marks a module that must not be imported
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def needs_of(args: argparse.Namespace) -> list[Needs]:
    """What the parsed command line ``args`` will import, flags and XRAYSR_BACKEND included."""
    command = args.command
    needs: list[Needs] = []
    if command in {"train-vae", "train", "evaluate"}:
        needs.append(Needs(TRAINING, INSTALL_HINT["train"]))
    elif command in {"export", "import-engines"}:
        needs.append(Needs((*TRAINING, "onnx"), INSTALL_HINT["train"]))
    elif command == "prepare":
        needs.append(Needs(("cv2",), INSTALL_HINT["train"]))
    elif command == "quantize":
        needs.append(Needs(("onnx", *SCORING), INSTALL_HINT["train"]))
    elif command == "evaluate-served":
        needs.append(Needs(("httpx", *SCORING), INSTALL_HINT["train"]))
    elif command == "calibrate-interval":
        needs.append(Needs(("scipy",), INSTALL_HINT["train"]))
    elif command == "bench":
        if not args.no_http:
            needs.append(Needs(("httpx",), INSTALL_HINT["bench"], "to time requests over HTTP (or pass --no-http)"))
        if args.flops:
            needs.append(Needs(("onnx",), INSTALL_HINT["train"], "to count FLOPs (--flops)"))
        if args.checkpoint is not None:
            needs.append(Needs(TRAINING, INSTALL_HINT["train"], "to time the PyTorch reference (--checkpoint)"))
    elif command == "upscale" and getattr(args, "ray", None) is not None:
        needs.append(Needs(("ray", "pyarrow"), INSTALL_HINT["ray"], "to run on Ray (--ray)"))
    backend = getattr(args, "backend", None) or os.environ.get("XRAYSR_BACKEND")
    if command == "build-engines" or (command in {"serve", "upscale", "bench"} and backend == "tensorrt"):
        needs.append(Needs(("tensorrt", "pycuda"), TENSORRT_HINT, "for the TensorRT backend"))
    return needs


def missing(modules: Iterable[str]) -> list[str]:
    return [module for module in modules if not is_installed(module)]


def check_dependencies(args: argparse.Namespace) -> None:
    """Raises MissingDependencyError for the first of ``args``' needs that is not installed."""
    for need in needs_of(args):
        absent = missing(need.modules)
        if absent:
            why = f" {need.why}" if need.why else ""
            absent = [DISTRIBUTION.get(module, module) for module in absent]
            raise MissingDependencyError(
                f"this command needs {', '.join(absent)}{why}, which {'is' if len(absent) == 1 else 'are'} "
                f"not installed: {need.install}"
            )
