"""ONNX → TensorRT engine, cached on disk: the precision policy, the cache key, and the builder.

A serialized engine only runs on the TensorRT version and GPU that built it, so the cache key hashes both
with the ONNX file's checksum and every builder option that changes the engine; a sidecar JSON beside each
``.plan`` records those fields so a stale or foreign engine is rebuilt, never deserialized. The policy and
the key are pure Python; TensorRT is imported only inside ``build_engine`` so this module imports anywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from xraysr.service.manifest import MAX_SAMPLES, Manifest, Precision, load_manifest

logger = logging.getLogger(__name__)


# TensorRT runs INT8 kernels only from compute capability 6.1 (Pascal GP10x) and fast FP16 from 5.3
# (the original Jetson Nano's Maxwell GM20B is 5.3: FP16 yes, INT8 no).
INT8_MIN_COMPUTE_CAPABILITY = (6, 1)
FP16_MIN_COMPUTE_CAPABILITY = (5, 3)
DEFAULT_WORKSPACE_MIB = 1024
TIMING_CACHE_NAME = "timing.cache"


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
    if effective == "int8" and capability < INT8_MIN_COMPUTE_CAPABILITY:
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
    model needs the INT8 kernels that compute capability < 6.1 lacks.
    """
    if effective == "int8" and manifest.precision != "int8":
        raise ValueError(
            f"model {manifest.model} is {manifest.precision}; an INT8 engine needs a quantized (Q/DQ) model: "
            "run `xraysr quantize` and build from its engines/<model> folder"
        )
    if manifest.precision == "int8" and effective != "int8":
        raise ValueError(
            f"model {manifest.model} is quantized (Q/DQ) but this GPU builds {effective}: TensorRT needs INT8 "
            "kernels for Q/DQ layers; build the fp32 or fp16 model for this GPU instead"
        )


@dataclass(frozen=True)
class EngineKey:
    """Everything that makes one serialized engine differ from another; the sidecar stores these fields."""

    component: str
    precision: Precision
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    workspace_mib: int
    max_batch: int

    def digest(self) -> str:
        fields = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(fields.encode()).hexdigest()

    def file_name(self) -> str:
        return f"{self.component}-{self.precision}-{self.digest()[:16]}.plan"


def sidecar_path(plan: Path) -> Path:
    return plan.with_suffix(".json")


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


def _write_atomically(path: Path, payload: bytes) -> None:
    # Write beside the target then rename: a crash or a second builder never leaves a half-written plan.
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
    _write_atomically(plan, serialized)
    _write_atomically(sidecar_path(plan), (json.dumps(dataclasses.asdict(key), indent=1) + "\n").encode())
    return serialized, "built"


def build_engine(
    onnx_path: Path,
    precision: Precision,
    max_batch: int,
    workspace_mib: int,
    timing_cache: Path | None = None,
    trt_logger: Any = None,
) -> bytes:
    """Parses one ONNX file and builds a serialized engine with a dynamic ``batch`` axis of 1..max_batch."""
    import tensorrt as trt

    trt_logger = trt_logger or trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    # TensorRT 10 made explicit batch the only mode and removed the flag; 8.x still needs it.
    explicit_batch = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    network = builder.create_network(0 if explicit_batch is None else 1 << int(explicit_batch))
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse(Path(onnx_path).read_bytes(), path=str(onnx_path)):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    workspace = workspace_mib << 20
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    else:  # TensorRT < 8.4 (JetPack 4.6 on the original Nano)
        config.max_workspace_size = workspace
    match precision:
        case "int8":
            # Explicit quantization from the Q/DQ nodes; FP16 lets the layers between them run at half precision.
            config.set_flag(trt.BuilderFlag.INT8)
            config.set_flag(trt.BuilderFlag.FP16)
        case "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        case "fp32":
            pass

    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shape = tuple(tensor.shape)
        bounds = [tuple(size if size >= 0 else batch for size in shape) for batch in (1, 1, max_batch)]
        profile.set_shape(tensor.name, *bounds)
    config.add_optimization_profile(profile)

    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {onnx_path} at {precision} (see its log above)")
    if cache is not None and timing_cache is not None:
        _write_atomically(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


@dataclass(frozen=True)
class Device:
    name: str
    compute_capability: str
    tensorrt_version: str


def current_device() -> Device:
    """The GPU and TensorRT this process builds for; raises ImportError when either library is missing."""
    import pycuda.driver as cuda
    import tensorrt as trt

    try:
        cuda.init()
        gpu = cuda.Device(0)
        major, minor = gpu.compute_capability()
    except cuda.Error as error:
        raise RuntimeError(f"no usable CUDA GPU: {error}") from error
    return Device(name=gpu.name(), compute_capability=f"{major}.{minor}", tensorrt_version=trt.__version__)


@dataclass(frozen=True)
class BuildReport:
    component: str
    precision: Precision
    plan: Path
    action: Literal["loaded", "built"]


def engine_keys(
    manifest: Manifest, device: Device, precision: Precision, workspace_mib: int, max_batch: int
) -> dict[str, EngineKey]:
    return {
        name: EngineKey(
            component=name,
            precision=precision,
            onnx_sha256=component.sha256,
            tensorrt_version=device.tensorrt_version,
            gpu_name=device.name,
            compute_capability=device.compute_capability,
            workspace_mib=workspace_mib,
            max_batch=max_batch,
        )
        for name, component in manifest.components.items()
    }


def build_all(
    model_dir: Path,
    cache_dir: Path,
    requested: Precision,
    device: Device,
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    max_batch: int = MAX_SAMPLES,
) -> tuple[dict[str, bytes], list[BuildReport]]:
    """Every component's serialized engine, loaded from ``cache_dir`` or built into it.

    The precision is resolved for this GPU first, then the manifest read for it: int8 builds the Q/DQ files
    of manifest.int8.json, fp16 and fp32 the FP32 files of manifest.json, so --precision int8 on a Nano
    builds FP16 from the FP32 model rather than failing on Q/DQ layers it has no kernels for.
    """
    if max_batch < 1:
        raise ValueError(f"max batch must be at least 1, got {max_batch}")
    effective = resolve_precision(requested, device.compute_capability)
    manifest = load_manifest(model_dir, "int8" if effective == "int8" else "fp32")
    check_build_request(manifest, effective)
    engines: dict[str, bytes] = {}
    reports: list[BuildReport] = []
    timing_cache = Path(cache_dir) / TIMING_CACHE_NAME
    keys = engine_keys(manifest, device, effective, workspace_mib, max_batch)
    for name, component in manifest.components.items():
        key = keys[name]
        build = functools.partial(
            build_engine, Path(model_dir) / component.path, effective, max_batch, workspace_mib, timing_cache
        )
        engines[name], action = load_or_build(cache_dir, key, build)
        reports.append(BuildReport(name, effective, Path(cache_dir) / key.file_name(), action))
        logger.info("%s %s engine %s", action, name, key.file_name())
    return engines, reports
