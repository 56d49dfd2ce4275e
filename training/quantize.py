"""`xraysr quantize`: engines/<model> FP32 ONNX → INT8 QDQ ONNX + manifest.int8.json, measured component by component.

1. Calibrate on what each component really sees when serving: LR images of the chosen split for the
   encoder, the (noisy_latent, timestep, lr_latent) of the default answer (the one-pass estimate) and of every
   DDIM step of the loop for the UNet, the final hr_latents for the decoder, all recorded by running the FP32
   service pipeline (a recording runtime, so the loop is the service's own and cannot drift).
2. Quantize with ONNX Runtime's ``quantize_static`` in QDQ format, symmetric INT8 activations and
   per-channel symmetric INT8 weights: the explicit-quantization form TensorRT 10 builds INT8 engines from.
3. Sensitivity: quantize one component at a time (the others FP32) and measure the whole pipeline's
   default answer's PSNR against HR on the calibration images. The encoder and decoder are near-identity pixel
   (un)shuffles whose output precision *is* the image precision; one costing more than ``max_component_drop_db`` PSNR or
   ``max_component_ssim_drop`` SSIM stays FP32 (the default model's SSIM margin over bicubic is only 0.002).
   For the UNet, the variant that keeps the stem conv, the head conv and the time-embedding Gemms in float
   competes with the fully quantized one; the better one on the calibration images ships.
4. The step graph (``unet_step``: the UNet + one DDIM update, TensorRT's on-GPU loop), when the model has one,
   is quantized with the UNet's plan: the same calibration steps (each with its alphas) and the same float
   parts, so the loop a Jetson runs is the INT8 UNet that was measured.
5. Score FP32, INT8 (the default answer) and bicubic on the test split and write the report; every component of
   manifest.int8.json records its precision (int8 for a QDQ file, fp32 for one kept float).
"""

from __future__ import annotations

import datetime
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

from xraysr.service.manifest import COMPONENTS, Manifest, load_manifest, sha256_of, write_manifest
from xraysr.service.pipeline import AnswerPlan, SRPipeline, choose_answer
from xraysr.service.runtimes import NO_DEVICE_TIME, Runtime
from xraysr.service.sampler import DDIMSampler
from xraysr.training.data import read_splits
from xraysr.training.metrics import bicubic_upscale, psnr, ssim

logger = logging.getLogger(__name__)

# Conv and Gemm carry the arithmetic TensorRT runs in INT8; quantizing the elementwise ops (norms, SiLU, adds)
# around them would only add rounding without saving time.
QUANTIZED_OPS = ["Conv", "Gemm"]
FLOAT_UNET_PARTS = ("stem", "head", "time_mlp")
STEP_GRAPH = "unet_step"


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
        self._sessions = {
            name: ort.InferenceSession(str(files[name]), providers=["CPUExecutionProvider"]) for name in COMPONENTS
        }
        self._outputs = {name: manifest.components[name].outputs[0].name for name in COMPONENTS}

    @property
    def last_gpu_seconds(self) -> Mapping[str, float]:
        return NO_DEVICE_TIME

    def run(self, component: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        (output,) = self._sessions[component].run([self._outputs[component]], inputs)
        return output

    def close(self) -> None:
        self._sessions.clear()


class _FeedReader(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


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


def answer_all(pipeline: SRPipeline, pairs: list[Pair], plan: AnswerPlan, seed: int) -> list[np.ndarray]:
    # One seed for every image, as `xraysr evaluate-served --seed` sends it, so the numbers compare.
    return [pipeline.answer(pair.lr, plan, seed).image for pair in pairs]


def unet_float_nodes(model_path: Path) -> dict[str, list[str]]:
    """The UNet parts that may stay float: first conv (stem), last conv (head), the time-embedding Gemms."""
    nodes = onnx.load(str(model_path)).graph.node
    convs = [node.name for node in nodes if node.op_type == "Conv"]
    return {
        "stem": convs[:1],
        "head": convs[-1:],
        "time_mlp": [node.name for node in nodes if node.op_type == "Gemm"],
    }


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


def quantize_step_graph(
    fp32_path: Path,
    out_path: Path,
    feeds: list[dict[str, np.ndarray]],
    float_parts: tuple[str, ...],
    unet_int8: Path,
    sampler: DDIMSampler,
) -> dict:
    """Quantizes the step graph with the UNet's plan and measures it twice: against the FP32 step graph, and
    against what the host loop computes from the INT8 UNet (its prediction, then ``sampler.step``)."""
    parts = unet_float_nodes(fp32_path)  # the DDIM update adds no Conv or Gemm: the same stem, head and time MLP
    exclude = [node for part in float_parts for node in parts[part]]
    logger.info("quantizing the step graph (%d float nodes)", len(exclude))
    quantize_component(fp32_path, out_path, feeds, exclude)
    return {
        "float_nodes": exclude,
        "output_vs_fp32": output_difference(fp32_path, out_path, feeds),
        "max_abs_vs_int8_unet_host_update": host_update_difference(unet_int8, out_path, feeds, sampler),
    }


def host_update_difference(
    unet_int8: Path, step_int8: Path, feeds: list[dict[str, np.ndarray]], sampler: DDIMSampler
) -> float:
    """Max |step graph - (UNet, then the numpy DDIM update)| over the feeds; ``sampler`` has its timesteps set."""
    unet = ort.InferenceSession(str(unet_int8), providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(str(step_int8), providers=["CPUExecutionProvider"])
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
    reference_session = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    quantized_session = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    max_abs, abs_sum, squared_sum, count, low, high = 0.0, 0.0, 0.0, 0, np.inf, -np.inf
    for feed in feeds:
        (reference,) = reference_session.run(None, feed)
        (quantized,) = quantized_session.run(None, feed)
        error = np.abs(quantized.astype(np.float64) - reference)
        max_abs = max(max_abs, float(error.max()))
        abs_sum, squared_sum, count = abs_sum + error.sum(), squared_sum + (error**2).sum(), count + error.size
        low, high = min(low, float(reference.min())), max(high, float(reference.max()))
    mse = squared_sum / count
    peak = high - low
    return {
        "max_abs": max_abs,
        "mean_abs": float(abs_sum / count),
        "psnr_db": float(10 * np.log10(peak**2 / mse)) if mse > 0 else float("inf"),
    }


def score(images: list[np.ndarray], pairs: list[Pair]) -> dict[str, float]:
    return {
        "psnr": float(np.mean([psnr(image, pair.hr) for image, pair in zip(images, pairs, strict=True)])),
        "ssim": float(np.mean([ssim(image, pair.hr) for image, pair in zip(images, pairs, strict=True)])),
    }


def quantize_engines(
    engines: Path,
    calib_root: Path,
    out_dir: Path,
    calib_images: int = 64,
    split: str = "train",
    eval_split: str = "test",
    seed: int = 0,
    max_component_drop_db: float = 0.05,
    max_component_ssim_drop: float = 0.0005,
) -> dict:
    """Writes ``<component>.int8.onnx`` and manifest.int8.json into ``engines``, the report into ``out_dir``."""
    manifest = load_manifest(engines)
    plan = choose_answer(manifest.sampler)  # the default answer, what INT8 is measured on
    loop = choose_answer(manifest.sampler, steps=manifest.sampler.default_steps)  # served on request: calibrated
    steps = loop.steps
    fp32_files = {name: engines / component.path for name, component in manifest.components.items()}
    calibration = load_pairs(calib_root, split, calib_images)
    logger.info("calibrating on %d %s images: the %s and the %d-step loop", len(calibration), split, plan.answer, steps)

    # 1. calibration inputs, recorded from the FP32 service pipeline
    recorder = RecordingRuntime(FileRuntime(manifest, fp32_files))
    fp32_calibration = answer_all(SRPipeline(manifest, recorder), calibration, plan, seed)
    if plan != loop:
        answer_all(SRPipeline(manifest, recorder), calibration, loop, seed)
    feeds = recorder.inputs

    with tempfile.TemporaryDirectory() as work:
        # 2. one candidate file per component (two for the UNet: fully quantized, and with float parts)
        float_parts = unet_float_nodes(fp32_files["unet"])
        excluded = [node for part in FLOAT_UNET_PARTS for node in float_parts[part]]
        candidates = {
            "encoder": ("encoder", []),
            "decoder": ("decoder", []),
            "unet": ("unet", []),
            "unet_float_" + "_".join(FLOAT_UNET_PARTS): ("unet", excluded),
        }
        candidate_files: dict[str, Path] = {}
        for variant, (component, exclude) in candidates.items():
            candidate_files[variant] = Path(work) / f"{variant}.int8.onnx"
            logger.info("quantizing %s (%d float nodes)", variant, len(exclude))
            quantize_component(fp32_files[component], candidate_files[variant], feeds[component], exclude)

        # 3. sensitivity: each candidate alone in an otherwise FP32 pipeline, on the calibration images
        fp32_score = score(fp32_calibration, calibration)
        sensitivity: dict[str, dict] = {"fp32": {**fp32_score, "drop_db": 0.0, "ssim_drop": 0.0}}
        differences: dict[str, dict[str, float]] = {}
        for variant, (component, exclude) in candidates.items():
            files = {**fp32_files, component: candidate_files[variant]}
            pipeline = SRPipeline(manifest, FileRuntime(manifest, files))
            variant_score = score(answer_all(pipeline, calibration, plan, seed), calibration)
            sensitivity[variant] = {
                **variant_score,
                "drop_db": fp32_score["psnr"] - variant_score["psnr"],
                "ssim_drop": fp32_score["ssim"] - variant_score["ssim"],
                "float_nodes": exclude,
            }
            differences[variant] = output_difference(fp32_files[component], candidate_files[variant], feeds[component])
            logger.info("%s alone: %.3f dB drop", variant, sensitivity[variant]["drop_db"])

        unet_variant = min(("unet", list(candidates)[-1]), key=lambda variant: sensitivity[variant]["drop_db"])
        # The codecs are optional savings (tiny convs); each must stay under both budgets or it ships FP32.
        affordable = {
            codec: sensitivity[codec]["drop_db"] <= max_component_drop_db
            and sensitivity[codec]["ssim_drop"] <= max_component_ssim_drop
            for codec in ("encoder", "decoder")
        }
        chosen = {
            "encoder": "encoder" if affordable["encoder"] else None,
            "unet": unet_variant,
            "decoder": "decoder" if affordable["decoder"] else None,
        }
        int8_files = dict(fp32_files)
        for component, variant in chosen.items():
            stale_or_new = engines / f"{component}.int8.onnx"
            if variant is None:
                stale_or_new.unlink(missing_ok=True)  # an earlier run's file the manifest no longer names
            else:
                int8_files[component] = stale_or_new
                shutil.copyfile(candidate_files[variant], stale_or_new)

    # 4. the step graph, quantized with the chosen UNet plan
    step_graph = None
    step_file = engines / f"{STEP_GRAPH}.int8.onnx"
    if STEP_GRAPH in manifest.components:
        sampler = DDIMSampler(manifest.sampler)
        sampler.set_timesteps(steps)
        step_graph = quantize_step_graph(
            fp32_files[STEP_GRAPH],
            step_file,
            step_graph_feeds(sampler, manifest, feeds["unet"]),
            FLOAT_UNET_PARTS if sensitivity[unet_variant]["float_nodes"] else (),
            int8_files["unet"],
            sampler,
        )
        int8_files[STEP_GRAPH] = step_file
    else:
        step_file.unlink(missing_ok=True)

    # 5. the shipped INT8 manifest: same contract, FP32 files where quantizing measured too costly
    precisions: dict[str, Literal["fp32", "int8"]] = {
        name: "int8" if int8_files[name] != fp32_files[name] else "fp32" for name in manifest.components
    }
    components = {
        name: component.model_copy(
            update={
                "path": int8_files[name].name,
                "sha256": sha256_of(int8_files[name]),
                "precision": precisions[name],
            }
        )
        for name, component in manifest.components.items()
    }
    int8_manifest = Manifest.model_validate(
        {
            **manifest.model_dump(),
            "precision": "int8",
            "components": {name: component.model_dump() for name, component in components.items()},
            "provenance": {
                **manifest.provenance,
                "quantized_from": manifest.version,
                "quantized_on": f"{datetime.date.today():%Y-%m-%d}",
                "int8_components": ",".join(name for name, kind in precisions.items() if kind == "int8"),
                "fp32_components": ",".join(name for name, kind in precisions.items() if kind == "fp32") or "none",
                "unet_float_nodes": len(sensitivity[unet_variant]["float_nodes"]),
                "calibration": f"{len(calibration)} {split} images of {calib_root.name}: the {plan.answer} and the "
                f"{steps}-step loop",
            },
        }
    )
    write_manifest(int8_manifest, engines, "int8")

    # 6. the test split: FP32 vs INT8 vs bicubic, all against HR
    test = load_pairs(calib_root, eval_split)
    fp32_images = answer_all(SRPipeline(manifest, FileRuntime(manifest, fp32_files)), test, plan, seed)
    int8_images = answer_all(SRPipeline(int8_manifest, FileRuntime(int8_manifest, int8_files)), test, plan, seed)
    bicubic = [bicubic_upscale(pair.lr, manifest.image.hr_size) for pair in test]
    report = {
        "precision": precisions,
        "unet_variant": unet_variant,
        "components": differences,
        "sensitivity": sensitivity,
        "step_graph": step_graph,
        "test": {
            "split": eval_split,
            "images": len(test),
            "fp32": score(fp32_images, test),
            "int8": score(int8_images, test),
            "bicubic": score(bicubic, test),
            "fp32_vs_int8_psnr_db": psnr(np.concatenate(int8_images), np.concatenate(fp32_images)),
        },
        "files": {name: {"path": str(path), "bytes": path.stat().st_size} for name, path in int8_files.items()},
        "settings": {
            "engines": str(engines),
            "calib": str(calib_root),
            "split": split,
            "calib_images": len(calibration),
            "answer": plan.answer,
            "steps": steps,
            "seed": seed,
            "max_component_drop_db": max_component_drop_db,
            "max_component_ssim_drop": max_component_ssim_drop,
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quantize_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "quantize_report.md").write_text(report_markdown(report))
    return report


def report_markdown(report: dict) -> str:
    lines = [
        "## INT8 quantization",
        "",
        "Precision per component: " + ", ".join(f"{name} {kind}" for name, kind in report["precision"].items()),
        "",
        "| variant (alone, others FP32) | output max abs | output mean abs | output PSNR vs FP32 (dB) "
        "| pipeline PSNR (dB) | drop (dB) | pipeline SSIM | SSIM drop |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, difference in report["components"].items():
        sensitivity = report["sensitivity"][variant]
        lines.append(
            f"| {variant} | {difference['max_abs']:.4g} | {difference['mean_abs']:.4g} | {difference['psnr_db']:.2f} "
            f"| {sensitivity['psnr']:.3f} | {sensitivity['drop_db']:+.3f} | {sensitivity['ssim']:.4f} "
            f"| {sensitivity['ssim_drop']:+.4f} |"
        )
    step_graph = report["step_graph"]
    if step_graph is not None:
        difference = step_graph["output_vs_fp32"]
        lines += [
            "",
            f"Step graph (unet_step, the UNet's plan: {len(step_graph['float_nodes'])} float nodes): output vs FP32 "
            f"max abs {difference['max_abs']:.4g}, mean abs {difference['mean_abs']:.4g}, "
            f"PSNR {difference['psnr_db']:.2f} dB; vs the INT8 UNet + host update, max abs "
            f"{step_graph['max_abs_vs_int8_unet_host_update']:.3g}",
        ]
    test = report["test"]
    lines += [
        "",
        f"Pipeline PSNR on the calibration images, all FP32: {report['sensitivity']['fp32']['psnr']:.3f} dB",
        "",
        f"{test['split']} split, {test['images']} images, the default answer "
        f"({report['settings'].get('answer', 'samples')}; the loop: {report['settings']['steps']} steps), "
        f"seed {report['settings']['seed']}:",
        "",
        "| method | PSNR (dB) | SSIM |",
        "|---|---|---|",
    ]
    for method in ("fp32", "int8", "bicubic"):
        lines.append(f"| {method} | {test[method]['psnr']:.3f} | {test[method]['ssim']:.4f} |")
    lines += ["", f"INT8 output vs FP32 output: {test['fp32_vs_int8_psnr_db']:.2f} dB PSNR", ""]
    return "\n".join(lines)
