"""`xraysr bench`: per-stage latency (p50/p95) and throughput, in-process and over HTTP, and against the
PyTorch reference sampler when torch is installed, all measured in one run so they compare as ratios.

Timings are never asserted in tests: a shared machine makes absolute numbers noisy. They go to
docs/BENCHMARKS.md with the command, the machine and the date.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xraysr.service.imaging import encode_png
from xraysr.service.manifest import Precision, load_manifest, manifest_name
from xraysr.service.pipeline import AnswerPlan, SRPipeline
from xraysr.service.runtimes import Backend, load_runtime
from xraysr.service.tools.local_server import local_server

# What the caller waited, measured by the bench itself: over HTTP it includes the server's own "total".
WALL = "caller_wall"


@dataclass
class Series:
    """Seconds per stage over repeated runs of one configuration."""

    name: str
    seconds: dict[str, list[float]] = field(default_factory=dict)

    def add(self, stage: str, value: float) -> None:
        self.seconds.setdefault(stage, []).append(value)

    def percentile(self, stage: str, q: float) -> float:
        return float(np.percentile(self.seconds[stage], q))

    def images_per_second(self) -> float:
        return 1.0 / float(np.mean(self.seconds[WALL]))


def machine_description() -> str:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    described = f"{platform.machine()}, {os.cpu_count()} cores"
    return f"{described}{', ' + model if model else ''}, Python {platform.python_version()}"


def _time(series: Series, runs: int, call: Callable[[], dict[str, float]]) -> Series:
    for _ in range(runs):
        started = time.perf_counter()
        stages = call()
        for stage, seconds in stages.items():
            series.add(stage, seconds)
        series.add(WALL, time.perf_counter() - started)
    return series


def describe_plan(plan: AnswerPlan) -> str:
    if plan.answer == "estimate":
        return "the one-pass estimate (the default answer)"
    averaged = f", {plan.samples} samples averaged per request" if plan.samples > 1 else ""
    return f"the loop, {plan.steps} steps{averaged}"


def bench_in_process(pipeline: SRPipeline, image: np.ndarray, plan: AnswerPlan, runs: int) -> Series:
    # Warm-up at the measured batch: first-run allocations are not what a user waits for.
    pipeline.answer(image, plan, seed=0)
    return _time(
        Series("ONNX Runtime, in-process"),
        runs,
        lambda: pipeline.answer(image, plan, seed=1).stage_seconds,
    )


def bench_torch_reference(checkpoint: Path, image: np.ndarray, steps: int, runs: int) -> Series:
    import torch

    from xraysr.training.pipeline import TorchPipeline

    reference = TorchPipeline.from_checkpoint(checkpoint)
    lr = torch.from_numpy(image.astype(np.float32) / 127.5 - 1.0)[None, None]

    def run() -> dict[str, float]:
        reference(lr, steps, torch.Generator().manual_seed(1))
        return {}

    run()
    return _time(Series("PyTorch reference sampler (diffusers DDIM), in-process"), runs, run)


def bench_http(
    engines_dir: Path,
    model: str,
    image: np.ndarray,
    plan: AnswerPlan,
    runs: int,
    threads: int | None,
    precision: str,
) -> Series:
    """Starts `xraysr serve` on a free loopback port and times requests end to end."""
    import httpx

    body = encode_png(image)
    params = {} if plan.answer == "estimate" else {"steps": plan.steps, "seed": 1, "samples": plan.samples}
    with (
        local_server(engines_dir, model, threads, precision=precision) as base_url,
        httpx.Client(base_url=base_url, timeout=60) as client,
    ):

        def run() -> dict[str, float]:
            response = client.post(
                "/upscale",
                params=params,
                content=body,
                headers={"Content-Type": "image/png"},
            )
            response.raise_for_status()
            return {
                entry.split(";")[0].strip(): float(entry.split("dur=")[1].split(";")[0]) / 1000
                for entry in response.headers["Server-Timing"].split(",")
            }

        run()
        return _time(Series(f"over HTTP (uvicorn, loopback), {precision}"), runs, run)


def markdown(series: list[Series], command: str, plan: AnswerPlan, runs: int) -> str:
    # A request of K samples is one image made of K: its latency, not per sample.
    lines = [
        f"### {datetime.date.today():%Y-%m-%d} — {describe_plan(plan)}, {runs} runs each",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_description()}",
        "",
        "| configuration | stage | p50 (ms) | p95 (ms) |",
        "|---|---|---|---|",
    ]
    for entry in series:
        for stage in entry.seconds:
            lines.append(
                f"| {entry.name} | {stage} | {entry.percentile(stage, 50) * 1000:.1f} | "
                f"{entry.percentile(stage, 95) * 1000:.1f} |"
            )
    lines += ["", "| configuration | images/s | relative to the first |", "|---|---|---|"]
    first = series[0].images_per_second()
    for entry in series:
        lines.append(f"| {entry.name} | {entry.images_per_second():.2f} | {entry.images_per_second() / first:.2f}× |")
    return "\n".join(lines) + "\n"


def run_bench(
    engines_dir: Path,
    model: str,
    image: np.ndarray,
    plan: AnswerPlan,
    runs: int,
    backend: Backend = "onnxruntime",
    threads: int | None = None,
    http: bool = True,
    checkpoint: Path | None = None,
    precision: Precision = "fp32",
) -> list[Series]:
    """In-process for ``precision``, and for the other of FP32 and INT8 when the model folder has both, so the two
    compare as a ratio measured in one run; then over HTTP (at ``precision``) and the PyTorch reference loop (one
    sample, for a loop ``plan`` only)."""
    model_dir = engines_dir / model
    has_int8 = (model_dir / manifest_name("int8")).is_file()
    others: list[Precision] = [
        other for other in ("fp32", "int8") if other != precision and (other != "int8" or has_int8)
    ]
    series = []
    for each in [precision, *others]:
        manifest = load_manifest(model_dir, each)
        pipeline = SRPipeline(manifest, load_runtime(backend, manifest, model_dir, threads))
        entry = bench_in_process(pipeline, image, plan, runs)
        entry.name = f"{entry.name}, {each}"
        series.append(entry)
    if http:
        series.append(bench_http(engines_dir, model, image, plan, runs, threads, precision))
    if checkpoint is not None and plan.answer == "samples":
        reference = bench_torch_reference(checkpoint, image, plan.steps, runs)
        reference.name += ", one sample" if plan.samples > 1 else ""
        series.append(reference)
    return series
