"""One ONNX file FP32 → INT8 QDQ with ONNX Runtime's ``quantize_static``, and how far its output moved.

QDQ format, symmetric INT8 activations and per-channel symmetric INT8 weights: the explicit-quantization form
TensorRT 10 builds INT8 engines from. Some UNet parts may stay float (``unet_float_nodes``); the step graph
(``unet_step``: the UNet + one DDIM update) is calibrated on the UNet's steps (``step_graph_feeds``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from xraysr.service.fidelity import psnr_from_mse
from xraysr.service.manifest import Manifest
from xraysr.service.runtimes.onnxruntime import create_session
from xraysr.service.sampler import DDIMSampler

# Conv and Gemm carry the arithmetic TensorRT runs in INT8; quantizing the elementwise ops (norms, SiLU, adds)
# around them would only add rounding without saving time.
QUANTIZED_OPS = ["Conv", "Gemm"]
FLOAT_UNET_PARTS = ("stem", "head", "time_mlp")
STEP_GRAPH = "unet_step"


class _FeedReader(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def unet_float_nodes(model_path: Path) -> dict[str, list[str]]:
    """The UNet parts that may stay float: first conv (stem), last conv (head), the time-embedding Gemms."""
    nodes = onnx.load(str(model_path)).graph.node
    convs = [node.name for node in nodes if node.op_type == "Conv"]
    return {
        "stem": convs[:1],
        "head": convs[-1:],
        "time_mlp": [node.name for node in nodes if node.op_type == "Gemm"],
    }


def quantize_component(
    fp32_path: Path, out_path: Path, feeds: list[dict[str, np.ndarray]], nodes_to_exclude: list[str] | None = None
) -> None:
    with tempfile.TemporaryDirectory() as work:
        # ONNX shape inference and ORT's basic graph optimizations first, so Q/DQ pairs land on the final graph.
        # Symbolic shape inference is skipped: it gives up on the exported Resize/Reshape shape subgraphs.
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            _FeedReader(feeds),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=nodes_to_exclude or [],
            calibrate_method=CalibrationMethod.MinMax,
            # TensorRT takes symmetric INT8 only (zero point 0) and fuses a float bias itself, so biases stay float
            # rather than INT32 DQ. No CalibMaxIntermediateOutputs: ORT 1.32 drops the data collected before each
            # flush, and the augmented graph keeps only per-tensor min/max anyway.
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )


def step_graph_feeds(
    sampler: DDIMSampler, manifest: Manifest, unet_feeds: list[dict[str, np.ndarray]]
) -> list[dict[str, np.ndarray]]:
    """The UNet's calibration steps as step-graph inputs: the same (sample, timestep, lr_latent), plus the alphas
    the pipeline hands a device loop at that timestep (``sampler.alphas``; its timesteps must be set)."""
    # Positional: training/export.py's export_unet_step puts the UNet's three inputs first, then the two alphas.
    sample, timestep, lr_latent, alpha_t, alpha_prev = (spec.name for spec in manifest.components[STEP_GRAPH].inputs)
    noisy_latent, unet_timestep, unet_lr_latent = (spec.name for spec in manifest.components["unet"].inputs)
    feeds = []
    for feed in unet_feeds:
        alphas = np.array([sampler.alphas(int(t)) for t in feed[unet_timestep]], dtype=np.float32)
        feeds.append(
            {
                sample: feed[noisy_latent],
                timestep: feed[unet_timestep],
                lr_latent: feed[unet_lr_latent],
                alpha_t: alphas[:, 0],
                alpha_prev: alphas[:, 1],
            }
        )
    return feeds


def host_update_difference(
    unet_int8: Path, step_int8: Path, feeds: list[dict[str, np.ndarray]], sampler: DDIMSampler
) -> float:
    """Max |step graph - (UNet, then the numpy DDIM update)| over the feeds; ``sampler`` has its timesteps set."""
    unet = create_session(unet_int8)
    step = create_session(step_int8)
    unet_names = [tensor.name for tensor in unet.get_inputs()]
    largest = 0.0
    for feed in feeds:
        sample, timestep, lr_latent = (feed[spec.name] for spec in step.get_inputs()[:3])
        (prediction,) = unet.run(None, dict(zip(unet_names, (sample, timestep, lr_latent), strict=True)))
        (in_graph,) = step.run(None, feed)
        on_host = sampler.step(prediction, int(timestep[0]), sample)
        largest = max(largest, float(np.abs(in_graph - on_host).max()))
    return largest


def output_difference(fp32_path: Path, int8_path: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Max/mean absolute difference and PSNR of the INT8 output vs FP32, peak = the FP32 outputs' range."""
    reference_session = create_session(fp32_path)
    quantized_session = create_session(int8_path)
    max_abs, abs_sum, squared_sum, count, low, high = 0.0, 0.0, 0.0, 0, np.inf, -np.inf
    for feed in feeds:
        (reference,) = reference_session.run(None, feed)
        (quantized,) = quantized_session.run(None, feed)
        error = np.abs(quantized.astype(np.float64) - reference)
        max_abs = max(max_abs, float(error.max()))
        abs_sum, squared_sum, count = abs_sum + error.sum(), squared_sum + (error**2).sum(), count + error.size
        low, high = min(low, float(reference.min())), max(high, float(reference.max()))
    return {
        "max_abs": max_abs,
        "mean_abs": float(abs_sum / count),
        # Accumulated feed by feed: the feeds' outputs are never held all at once.
        "psnr_db": psnr_from_mse(squared_sum / count, data_range=high - low),
    }
