"""The TensorRT builder: ONNX file → serialized engine, with plugins, parser flags, precision and timing cache.

What each step guards against, on the TensorRT 8.6 (JetPack 6.0) and 10.3 (JetPack 6.1/6.2) this runs on:

- Plugins. TensorRT 8.6's ONNX parser imports InstanceNormalization (every GroupNorm here) as the
  ``InstanceNormalization_TRT`` plugin unless ``OnnxParserFlag.NATIVE_INSTANCENORM`` is set (TensorRT 10 sets
  it by default). The parser registers the plugin library while parsing; a process that only deserializes
  (``xraysr serve`` after the container's ``xraysr build-engines``) must call ``init_libnvinfer_plugins``
  itself, as NVIDIA's Python samples do, or ``deserialize_cuda_engine`` returns None. We do both.
- Precision. ``BuilderFlag.FP16`` lets TensorRT run any layer in half precision; the time embedding and the
  step graph's DDIM update are pinned to FP32 (service/runtimes/trt_precision.py).
- Timing cache. A blob from another TensorRT version or GPU fails to load; one per version and GPU
  (trt_build.timing_cache_path), every call's result checked, a bad one discarded with a log line.

tensorrt is imported inside the functions, so importing this module needs no GPU.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from xraysr.service.manifest import Precision
from xraysr.service.runtimes.atomic import write_atomically
from xraysr.service.runtimes.trt_precision import pin_fp32_layers

logger = logging.getLogger(__name__)


@functools.cache
def tensorrt_logger(trt: Any) -> Any:
    """One ILogger per process (per tensorrt module) for builders, parsers, runtimes and plugins alike.

    It forwards TensorRT's warnings and errors to ``logging`` and keeps the latest errors, so a failed build
    can say what TensorRT said rather than "see the log above".
    """

    class TensorRTLog(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, message: str) -> None:
            levels = trt.ILogger.Severity
            if severity in (levels.INTERNAL_ERROR, levels.ERROR):
                self.errors.append(message)
                logger.error("TensorRT: %s", message)
            elif severity == levels.WARNING:
                logger.warning("TensorRT: %s", message)

    return TensorRTLog()


@functools.cache
def register_plugins(trt: Any) -> None:
    """``init_libnvinfer_plugins`` once per process, before any parse or deserialize (see the module doc)."""
    if not trt.init_libnvinfer_plugins(tensorrt_logger(trt), ""):
        raise RuntimeError("TensorRT could not initialise its plugin library (libnvinfer_plugin)")


def _recent_errors(trt_logger: Any) -> str:
    errors = getattr(trt_logger, "errors", [])
    return "; ".join(errors[-3:]) if errors else "no message from TensorRT"


def _create_timing_cache(config: Any, blob: bytes, path: Path) -> Any:
    try:
        cache = config.create_timing_cache(blob)
    except Exception as error:  # noqa: BLE001 - the bindings raise what the C++ asserts; Polygraphy catches it too
        logger.warning("TensorRT could not read the timing cache %s: %s", path, error)
        return None
    return cache


def attach_timing_cache(config: Any, path: Path) -> Any:
    """The timing cache from ``path`` set on ``config`` (an empty one when the file is missing or unusable).

    A corrupt blob, or one another TensorRT or GPU wrote, is deleted and replaced by an empty cache; the build
    then runs without one only if TensorRT refuses even an empty cache. Returns the cache set, or None.
    """
    blob = path.read_bytes() if path.is_file() else b""
    cache = _create_timing_cache(config, blob, path)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return cache
    if not blob:
        logger.warning("TensorRT refused an empty timing cache: building %s without one", path.name)
        return None
    logger.warning(
        "discarding timing cache %s (corrupt, or written by another TensorRT or GPU): starting an empty one", path
    )
    path.unlink(missing_ok=True)
    cache = _create_timing_cache(config, b"", path)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return cache
    logger.warning("TensorRT refused an empty timing cache: building without one")
    return None


def save_timing_cache(config: Any, path: Path) -> None:
    cache = config.get_timing_cache()
    if not cache:
        logger.warning("TensorRT returned no timing cache after the build: %s not updated", path)
        return
    write_atomically(path, bytes(cache.serialize()))


def build_engine(
    onnx_path: Path,
    precision: Precision,
    max_batch: int,
    workspace_mib: int,
    timing_cache: Path | None = None,
) -> bytes:
    """Parses one ONNX file and builds a serialized engine at ``precision`` with a ``batch`` axis of 1..max_batch.

    ``int8`` is explicit quantization (the file's Q/DQ nodes carry the scales) with FP16 for the layers
    between them; ``fp16`` lets every layer run in half precision; ``fp32`` sets neither. In both reduced
    precisions the time embedding and the DDIM update stay FP32 (trt_precision.py).
    """
    import tensorrt as trt

    trt_logger = tensorrt_logger(trt)
    register_plugins(trt)
    trt_logger.errors.clear()
    builder = trt.Builder(trt_logger)
    # Required on 8.x (the parser refuses implicit-batch networks); deprecated and ignored on 10.x.
    explicit_batch = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    network = builder.create_network(0 if explicit_batch is None else 1 << int(explicit_batch))
    parser = trt.OnnxParser(network, trt_logger)
    native_instancenorm = getattr(getattr(trt, "OnnxParserFlag", None), "NATIVE_INSTANCENORM", None)
    if native_instancenorm is not None:  # TensorRT >= 8.6: no plugin in the plan at all
        parser.set_flag(native_instancenorm)
    if not parser.parse(Path(onnx_path).read_bytes(), path=str(onnx_path)):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {Path(onnx_path).name}: {errors or _recent_errors(trt_logger)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    match precision:
        case "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            config.set_flag(trt.BuilderFlag.FP16)
        case "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        case "fp32":
            pass
    if precision != "fp32":
        pinned = pin_fp32_layers(trt, network)
        if pinned:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            logger.info(
                "%s: %d time-embedding and %d DDIM-update layers pinned to FP32",
                Path(onnx_path).name,
                len(pinned.time_embedding),
                len(pinned.ddim_update),
            )

    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shape = tuple(tensor.shape)
        bounds = [tuple(size if size >= 0 else batch for size in shape) for batch in (1, 1, max_batch)]
        profile.set_shape(tensor.name, *bounds)
    config.add_optimization_profile(profile)

    cache = attach_timing_cache(config, timing_cache) if timing_cache is not None else None
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        name = Path(onnx_path).name
        raise RuntimeError(f"TensorRT failed to build {name} at {precision}: {_recent_errors(trt_logger)}")
    if cache is not None and timing_cache is not None:
        save_timing_cache(config, timing_cache)
    return bytes(serialized)
