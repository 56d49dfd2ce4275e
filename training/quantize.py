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
5. Every component of manifest.int8.json records its precision (int8 for a QDQ file, fp32 for one kept float).
6. Score FP32, INT8 (the default answer) and bicubic on the test split and write the report.

This module is the procedure, one function per step; the pieces live beside it: quantize_calibration.py (the
image pairs, the recording and file runtimes, the scores), quantize_qdq.py (``quantize_static`` and the output
differences), quantize_report.py (the report's JSON and Markdown).
"""

from __future__ import annotations

import datetime
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from xraysr.service.manifest import Manifest, load_manifest, sha256_of, write_manifest
from xraysr.service.pipeline import AnswerPlan, SRPipeline, choose_answer
from xraysr.service.sampler import DDIMSampler
from xraysr.training.metrics import bicubic_upscale, psnr
from xraysr.training.quantize_calibration import FileRuntime, Pair, answer_all, load_pairs, record_calibration, score
from xraysr.training.quantize_qdq import (
    FLOAT_UNET_PARTS,
    STEP_GRAPH,
    host_update_difference,
    output_difference,
    quantize_component,
    step_graph_feeds,
    unet_float_nodes,
)
from xraysr.training.quantize_report import write_report

logger = logging.getLogger(__name__)

UNET_FLOAT_VARIANT = "unet_float_" + "_".join(FLOAT_UNET_PARTS)
Precisions = dict[str, Literal["fp32", "int8"]]


@dataclass(frozen=True)
class Choice:
    """The variant each component ships, ``None`` for its FP32 file."""

    encoder: str | None
    unet: str
    decoder: str | None


@dataclass(frozen=True)
class Candidate:
    """One INT8 file that may ship: the component it stands in for, the nodes it keeps float, where it is."""

    component: str
    float_nodes: list[str]
    path: Path


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
    fp32_files: dict[str, Path] = {name: engines / component.path for name, component in manifest.components.items()}
    calibration = load_pairs(calib_root, split, calib_images)
    logger.info("calibrating on %d %s images: the %s and the %d-step loop", len(calibration), split, plan.answer, steps)

    # 1. calibration inputs, recorded from the FP32 service pipeline
    fp32_calibration, feeds = record_calibration(manifest, fp32_files, calibration, plan, loop, seed)

    with tempfile.TemporaryDirectory() as work:
        # 2. one candidate file per component (two for the UNet: fully quantized, and with float parts)
        candidates = quantize_candidates(fp32_files, feeds, Path(work))
        # 3. sensitivity: each candidate alone in an otherwise FP32 pipeline, on the calibration images
        sensitivity, differences = measure_sensitivity(
            manifest, fp32_files, candidates, feeds, calibration, fp32_calibration, plan, seed
        )
        chosen = choose_variants(sensitivity, max_component_drop_db, max_component_ssim_drop)
        int8_files = install_chosen(engines, fp32_files, chosen, candidates)
    unet_variant = chosen.unet

    # 4. the step graph, quantized with the chosen UNet plan
    unet_float_parts = FLOAT_UNET_PARTS if sensitivity[unet_variant]["float_nodes"] else ()
    step_graph = quantize_step_graph(
        manifest, engines, fp32_files, int8_files["unet"], feeds["unet"], steps, unet_float_parts
    )
    if step_graph is not None:
        int8_files[STEP_GRAPH] = int8_path(engines, STEP_GRAPH)

    # 5. the shipped INT8 manifest: same contract, FP32 files where quantizing measured too costly
    precisions: Precisions = {
        name: "int8" if int8_files[name] != fp32_files[name] else "fp32" for name in manifest.components
    }
    int8_manifest = write_int8_manifest(
        manifest,
        engines,
        int8_files,
        precisions,
        unet_float_node_count=len(sensitivity[unet_variant]["float_nodes"]),
        calibration=f"{len(calibration)} {split} images of {calib_root.name}: the {plan.answer} and the "
        f"{steps}-step loop",
    )

    # 6. the test split: FP32 vs INT8 vs bicubic, all against HR
    test = load_pairs(calib_root, eval_split)
    report = {
        "precision": precisions,
        "unet_variant": unet_variant,
        "components": differences,
        "sensitivity": sensitivity,
        "step_graph": step_graph,
        "test": {
            "split": eval_split,
            **score_test_split(manifest, int8_manifest, fp32_files, int8_files, test, plan, seed),
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
    write_report(report, out_dir)
    return report


def int8_path(engines: Path, component: str) -> Path:
    return engines / f"{component}.int8.onnx"


def quantize_candidates(
    fp32_files: dict[str, Path], feeds: dict[str, list[dict[str, np.ndarray]]], work: Path
) -> dict[str, Candidate]:
    """Step 2: every component fully quantized, and the UNet once more with ``FLOAT_UNET_PARTS`` kept float."""
    float_parts = unet_float_nodes(fp32_files["unet"])
    excluded = [node for part in FLOAT_UNET_PARTS for node in float_parts[part]]
    variants = {
        "encoder": ("encoder", []),
        "decoder": ("decoder", []),
        "unet": ("unet", []),
        UNET_FLOAT_VARIANT: ("unet", excluded),
    }
    candidates = {}
    for variant, (component, exclude) in variants.items():
        candidates[variant] = Candidate(component, exclude, work / f"{variant}.int8.onnx")
        logger.info("quantizing %s (%d float nodes)", variant, len(exclude))
        quantize_component(fp32_files[component], candidates[variant].path, feeds[component], exclude)
    return candidates


def measure_sensitivity(
    manifest: Manifest,
    fp32_files: dict[str, Path],
    candidates: dict[str, Candidate],
    feeds: dict[str, list[dict[str, np.ndarray]]],
    calibration: list[Pair],
    fp32_calibration: list[np.ndarray],
    plan: AnswerPlan,
    seed: int,
) -> tuple[dict[str, dict], dict[str, dict[str, float]]]:
    """Step 3: each candidate alone in an otherwise FP32 pipeline. Returns the pipeline's scores and drops on the
    calibration images ("fp32" first), and each candidate's output difference from its FP32 file."""
    fp32_score = score(fp32_calibration, calibration)
    sensitivity: dict[str, dict] = {"fp32": {**fp32_score, "drop_db": 0.0, "ssim_drop": 0.0}}
    differences: dict[str, dict[str, float]] = {}
    for variant, candidate in candidates.items():
        files = {**fp32_files, candidate.component: candidate.path}
        pipeline = SRPipeline(manifest, FileRuntime(manifest, files))
        variant_score = score(answer_all(pipeline, calibration, plan, seed), calibration)
        sensitivity[variant] = {
            **variant_score,
            "drop_db": fp32_score["psnr"] - variant_score["psnr"],
            "ssim_drop": fp32_score["ssim"] - variant_score["ssim"],
            "float_nodes": candidate.float_nodes,
        }
        differences[variant] = output_difference(
            fp32_files[candidate.component], candidate.path, feeds[candidate.component]
        )
        logger.info("%s alone: %.3f dB drop", variant, sensitivity[variant]["drop_db"])
    return sensitivity, differences


def choose_variants(
    sensitivity: dict[str, dict], max_component_drop_db: float, max_component_ssim_drop: float
) -> Choice:
    """Step 3's verdict. The UNet ships its better candidate; the codecs are optional savings (tiny convs), each
    must stay under both budgets or it ships FP32."""
    unet_variant = min(("unet", UNET_FLOAT_VARIANT), key=lambda variant: sensitivity[variant]["drop_db"])
    affordable = {
        codec: sensitivity[codec]["drop_db"] <= max_component_drop_db
        and sensitivity[codec]["ssim_drop"] <= max_component_ssim_drop
        for codec in ("encoder", "decoder")
    }
    return Choice(
        encoder="encoder" if affordable["encoder"] else None,
        unet=unet_variant,
        decoder="decoder" if affordable["decoder"] else None,
    )


def install_chosen(
    engines: Path, fp32_files: dict[str, Path], chosen: Choice, candidates: dict[str, Candidate]
) -> dict[str, Path]:
    """Copies each chosen candidate to ``engines/<component>.int8.onnx``; returns the file each component ships."""
    int8_files = dict(fp32_files)
    for component, variant in asdict(chosen).items():
        stale_or_new = int8_path(engines, component)
        if variant is None:
            stale_or_new.unlink(missing_ok=True)  # an earlier run's file the manifest no longer names
        else:
            int8_files[component] = stale_or_new
            shutil.copyfile(candidates[variant].path, stale_or_new)
    return int8_files


def quantize_step_graph(
    manifest: Manifest,
    engines: Path,
    fp32_files: dict[str, Path],
    unet_int8: Path,
    unet_feeds: list[dict[str, np.ndarray]],
    steps: int,
    float_parts: tuple[str, ...],
) -> dict | None:
    """Step 4: writes ``engines/unet_step.int8.onnx`` with the UNet's plan and measures it twice: against the FP32
    step graph, and against what the host loop computes from the INT8 UNet (its prediction, then
    ``sampler.step``). ``None`` (and no file) for a model without a step graph."""
    step_file = int8_path(engines, STEP_GRAPH)
    if STEP_GRAPH not in manifest.components:
        step_file.unlink(missing_ok=True)
        return None
    sampler = DDIMSampler(manifest.sampler)
    sampler.set_timesteps(steps)
    feeds = step_graph_feeds(sampler, manifest, unet_feeds)
    fp32_path = fp32_files[STEP_GRAPH]
    parts = unet_float_nodes(fp32_path)  # the DDIM update adds no Conv or Gemm: the same stem, head and time MLP
    exclude = [node for part in float_parts for node in parts[part]]
    logger.info("quantizing the step graph (%d float nodes)", len(exclude))
    quantize_component(fp32_path, step_file, feeds, exclude)
    return {
        "float_nodes": exclude,
        "output_vs_fp32": output_difference(fp32_path, step_file, feeds),
        "max_abs_vs_int8_unet_host_update": host_update_difference(unet_int8, step_file, feeds, sampler),
    }


def write_int8_manifest(
    manifest: Manifest,
    engines: Path,
    int8_files: dict[str, Path],
    precisions: Precisions,
    unet_float_node_count: int,
    calibration: str,
) -> Manifest:
    """Step 5: manifest.int8.json, the FP32 manifest's contract with each component's shipped file, checksum and
    precision, and where it came from in its provenance."""
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
                "unet_float_nodes": unet_float_node_count,
                "calibration": calibration,
            },
        }
    )
    write_manifest(int8_manifest, engines, "int8")
    return int8_manifest


def score_test_split(
    manifest: Manifest,
    int8_manifest: Manifest,
    fp32_files: dict[str, Path],
    int8_files: dict[str, Path],
    test: list[Pair],
    plan: AnswerPlan,
    seed: int,
) -> dict:
    """Step 6: the default answer of FP32 and INT8, and bicubic, scored against HR on ``test``."""
    fp32_images = answer_all(SRPipeline(manifest, FileRuntime(manifest, fp32_files)), test, plan, seed)
    int8_images = answer_all(SRPipeline(int8_manifest, FileRuntime(int8_manifest, int8_files)), test, plan, seed)
    bicubic = [bicubic_upscale(pair.lr, manifest.image.hr_size) for pair in test]
    return {
        "images": len(test),
        "fp32": score(fp32_images, test),
        "int8": score(int8_images, test),
        "bicubic": score(bicubic, test),
        "fp32_vs_int8_psnr_db": psnr(np.concatenate(int8_images), np.concatenate(fp32_images)),
    }
