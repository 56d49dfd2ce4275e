"""ONNX → TensorRT engine, cached on disk: the precision policy, the cache key, and the build of every component.

A serialized engine only runs on the TensorRT version and GPU that built it, so the cache key hashes both
with the ONNX file's checksum, the precision each component is built at, every builder option that changes
the engine, and ``BUILD_RECIPE`` (how this code builds); a sidecar JSON beside each ``.plan`` records those
fields so a stale or foreign engine is rebuilt, never deserialized. The policy and the key are pure Python;
TensorRT is imported only by the builder (service/runtimes/trt_builder.py), so this module imports anywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from xraysr.service.manifest import MAX_SAMPLES, Component, Manifest, Precision, load_manifest, served_components
from xraysr.service.runtimes.atomic import write_atomically
from xraysr.service.runtimes.trt_builder import build_engine

logger = logging.getLogger(__name__)


# TensorRT runs INT8 kernels only from compute capability 6.1 (Pascal GP10x), except 6.2 (the TX2's GP10B),
# and fast FP16 from 5.3 (the original Jetson Nano's Maxwell GM20B is 5.3: FP16 yes, INT8 no).
INT8_MIN_COMPUTE_CAPABILITY = (6, 1)
NO_INT8_COMPUTE_CAPABILITIES = frozenset({(6, 2)})
FP16_MIN_COMPUTE_CAPABILITY = (5, 3)
DEFAULT_WORKSPACE_MIB = 1024
# Bump when a change here or in trt_builder.py/trt_precision.py changes the engine built from the same inputs
# (a parser flag, a builder flag, a layer pinned to FP32): old plans are then rebuilt, not silently reused.
# 2: per-component precision, native InstanceNorm, FP32 time embedding and DDIM update.
BUILD_RECIPE = 2


def parse_compute_capability(value: str | tuple[int, int]) -> tuple[int, int]:
    """ "8.7" or (8, 7) → (8, 7)."""
    if isinstance(value, tuple):
        return value
    try:
        major, minor = (int(part) for part in value.split("."))
    except ValueError as error:
        raise ValueError(f"compute capability must look like '8.7', got {value!r}") from error
    return major, minor


def resolve_precision(requested: Precision, compute_capability: str | tuple[int, int]) -> Precision:
    """The precision an engine is built at on this GPU: the request, lowered where the hardware lacks it."""
    capability = parse_compute_capability(compute_capability)
    shown = f"{capability[0]}.{capability[1]}"
    effective = requested
    if effective == "int8" and (capability < INT8_MIN_COMPUTE_CAPABILITY or capability in NO_INT8_COMPUTE_CAPABILITIES):
        logger.warning("compute capability %s has no INT8 in TensorRT: --precision int8 builds FP16", shown)
        effective = "fp16"
    if effective == "fp16" and capability < FP16_MIN_COMPUTE_CAPABILITY:
        logger.warning("compute capability %s has no fast FP16: --precision %s builds FP32", shown, requested)
        effective = "fp32"
    return effective


def check_build_request(manifest: Manifest, effective: Precision) -> None:
    """Refuses precision/model pairs TensorRT cannot build as asked, before any GPU time is spent.

    INT8 here is explicit quantization: the Q/DQ nodes of a quantized (``int8``) manifest's ONNX files carry
    the scales, so TensorRT needs no calibrator; a float model has no scales to build INT8 from, and a Q/DQ
    model needs the INT8 kernels that compute capability < 6.1 lacks. Which files hold Q/DQ nodes is each
    component's ``precision`` in the manifest.
    """
    quantized = sorted(name for name, component in manifest.components.items() if component.precision == "int8")
    if effective == "int8" and manifest.precision != "int8":
        raise ValueError(
            f"model {manifest.model} is {manifest.precision}; an INT8 engine needs a quantized (Q/DQ) model: "
            "run `xraysr quantize` and build from its engines/<model> folder"
        )
    if effective == "int8" and not quantized:
        raise ValueError(
            f"model {manifest.model}'s manifest.int8.json marks no component int8 (it predates per-component "
            "precision), so TensorRT cannot tell its Q/DQ files from its float ones: re-run `xraysr quantize`"
        )
    if effective != "int8" and (manifest.precision == "int8" or quantized):
        raise ValueError(
            f"model {manifest.model} is quantized (Q/DQ) but this GPU builds {effective}: TensorRT needs INT8 "
            "kernels for Q/DQ layers; build the fp32 or fp16 model for this GPU instead"
        )


def component_precision(effective: Precision, component: Component) -> Precision:
    """What one component is built at: an int8 build takes INT8 only for the Q/DQ files and keeps the rest FP32,
    the precision `xraysr quantize` measured and kept them at (their output precision is the image's)."""
    if effective == "int8":
        return "int8" if component.precision == "int8" else "fp32"
    return effective


@dataclass(frozen=True)
class EngineKey:
    """Everything that makes one serialized engine differ from another; the sidecar stores these fields."""

    component: str
    precision: Precision  # what this component is built at, not the model's
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    sm_count: int  # every Orin module reports the name "Orin": the 4 GB and 8 GB Orin Nano differ in SMs
    compute_capability: str
    workspace_mib: int
    max_batch: int
    build_recipe: int = BUILD_RECIPE

    def digest(self) -> str:
        fields = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(fields.encode()).hexdigest()

    def file_name(self) -> str:
        return f"{self.component}-{self.precision}-{self.digest()[:16]}.plan"


def default_cache_dir(model_dir: Path) -> Path:
    """Where engines are cached when no cache folder is given: beside the model (``model_dir/tensorrt``) when that
    folder is writable, as in a checkout or a user's venv; otherwise the user's cache, as for a wheel installed by
    root into a read-only site-packages (the Jetson image sets XRAYSR_TRT_CACHE_DIR to a volume instead)."""
    model_dir = Path(model_dir)
    if os.access(model_dir, os.W_OK):
        return model_dir / "tensorrt"
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return user_cache / "xraysr" / "tensorrt" / model_dir.name


def sidecar_path(plan: Path) -> Path:
    return plan.with_suffix(".json")


def discard_plan(plan: Path) -> None:
    """Deletes a plan and its sidecar (the sidecar first: it never vouches for a missing plan)."""
    sidecar_path(plan).unlink(missing_ok=True)
    plan.unlink(missing_ok=True)


def cached_engine(cache_dir: Path, key: EngineKey) -> Path | None:
    """The cached plan for ``key``, or None when there is none or its sidecar disagrees (stale or foreign)."""
    plan = Path(cache_dir) / key.file_name()
    sidecar = sidecar_path(plan)
    if not plan.is_file() or not sidecar.is_file():
        return None
    try:
        recorded = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("unreadable sidecar %s (%s): rebuilding %s", sidecar, error, plan.name)
        return None
    expected = dataclasses.asdict(key)
    if recorded != expected:
        differing = sorted(name for name in expected if recorded.get(name) != expected[name])
        logger.warning("cached %s was built for other %s: rebuilding", plan.name, ", ".join(differing))
        return None
    return plan


def load_or_build(
    cache_dir: Path, key: EngineKey, build: Callable[[], bytes]
) -> tuple[bytes, Literal["loaded", "built"]]:
    """The serialized engine for ``key``: from the cache when its sidecar matches, else ``build()`` and store."""
    plan = cached_engine(cache_dir, key)
    if plan is not None:
        return plan.read_bytes(), "loaded"
    serialized = build()
    plan = Path(cache_dir) / key.file_name()
    # The plan first, then its sidecar: a sidecar only ever vouches for a complete plan.
    write_atomically(plan, serialized)
    write_atomically(sidecar_path(plan), (json.dumps(dataclasses.asdict(key), indent=1) + "\n").encode())
    return serialized, "built"


@dataclass(frozen=True)
class Device:
    name: str
    compute_capability: str
    tensorrt_version: str
    sm_count: int

    def cache_tag(self) -> str:
        """A file-name-safe tag of this TensorRT and GPU: a timing cache is only valid for both."""
        name = re.sub(r"[^A-Za-z0-9]+", "-", self.name).strip("-") or "gpu"
        version = re.sub(r"[^A-Za-z0-9.]+", "-", self.tensorrt_version)
        return f"trt{version}-sm{self.compute_capability.replace('.', '')}-{self.sm_count}sms-{name}"


def timing_cache_path(cache_dir: Path, device: Device) -> Path:
    """One timing cache per TensorRT version and GPU: another version's blob fails to load (or asserts)."""
    return Path(cache_dir) / f"timing-{device.cache_tag()}.cache"


def current_device() -> Device:
    """The GPU and TensorRT this process builds for; raises ImportError when either library is missing."""
    import pycuda.driver as cuda
    import tensorrt as trt

    try:
        cuda.init()
        gpu = cuda.Device(0)
        major, minor = gpu.compute_capability()
        sm_count = int(gpu.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT))
    except cuda.Error as error:
        raise RuntimeError(f"no usable CUDA GPU: {error}") from error
    return Device(
        name=gpu.name(), compute_capability=f"{major}.{minor}", tensorrt_version=trt.__version__, sm_count=sm_count
    )


@dataclass(frozen=True)
class BuildReport:
    component: str
    precision: Precision
    plan: Path
    action: Literal["loaded", "built", "failed"]
    error: str | None = None  # TensorRT's complaint, when the build failed


class EngineBuildError(RuntimeError):
    """One or more components failed to build; ``reports`` says what happened to every component."""

    def __init__(self, reports: list[BuildReport]) -> None:
        self.reports = reports
        lines = [
            f"{report.component} ({report.precision}): {report.error}"
            if report.action == "failed"
            else f"{report.component} ({report.precision}): {report.action}"
            for report in reports
        ]
        failed = sum(report.action == "failed" for report in reports)
        super().__init__(f"{failed} of {len(reports)} TensorRT engines failed to build: " + "; ".join(lines))


def engine_keys(
    manifest: Manifest, device: Device, effective: Precision, workspace_mib: int, max_batch: int
) -> dict[str, EngineKey]:
    served = served_components(manifest, device_loop=True)
    return {
        name: EngineKey(
            component=name,
            precision=component_precision(effective, component),
            onnx_sha256=component.sha256,
            tensorrt_version=device.tensorrt_version,
            gpu_name=device.name,
            sm_count=device.sm_count,
            compute_capability=device.compute_capability,
            workspace_mib=workspace_mib,
            max_batch=max_batch,
        )
        for name, component in manifest.components.items()
        if name in served
    }


def build_all(
    model_dir: Path,
    cache_dir: Path,
    requested: Precision,
    device: Device,
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    max_batch: int = MAX_SAMPLES,
    only: Collection[str] | None = None,
) -> tuple[dict[str, bytes], list[BuildReport]]:
    """Every component's serialized engine (or those named in ``only``), loaded from ``cache_dir`` or built into it.

    The precision is resolved for this GPU first, then the manifest read for it: int8 builds the Q/DQ files
    of manifest.int8.json at INT8 and its float files at FP32, fp16 and fp32 the FP32 files of manifest.json,
    so --precision int8 on a Nano builds FP16 from the FP32 model rather than failing on Q/DQ layers it has no
    kernels for. A component that fails to build does not stop the others: each is reported (and logged),
    then ``EngineBuildError`` names every failure with TensorRT's message.
    """
    if max_batch < 1:
        raise ValueError(f"max batch must be at least 1, got {max_batch}")
    effective = resolve_precision(requested, device.compute_capability)
    manifest = load_manifest(model_dir, "int8" if effective == "int8" else "fp32")
    check_build_request(manifest, effective)
    engines: dict[str, bytes] = {}
    reports: list[BuildReport] = []
    timing_cache = timing_cache_path(cache_dir, device)
    keys = engine_keys(manifest, device, effective, workspace_mib, max_batch)
    for name in served_components(manifest, device_loop=True):
        component = manifest.components[name]
        if only is not None and name not in only:
            continue
        key = keys[name]
        plan = Path(cache_dir) / key.file_name()
        onnx_path = Path(model_dir) / component.path
        build = functools.partial(build_engine, onnx_path, key.precision, max_batch, workspace_mib, timing_cache)
        try:
            engines[name], action = load_or_build(cache_dir, key, build)
        except RuntimeError as error:  # TensorRT's parser or builder said no: report it, build the rest
            logger.error("failed %s engine (%s) from %s: %s", name, key.precision, onnx_path.name, error)
            reports.append(BuildReport(name, key.precision, plan, "failed", str(error)))
            continue
        reports.append(BuildReport(name, key.precision, plan, action))
        logger.info("%s %s engine (%s) %s", action, name, key.precision, plan.name)
    if any(report.action == "failed" for report in reports):
        raise EngineBuildError(reports)
    return engines, reports
