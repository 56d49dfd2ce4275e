"""service/tools/bench.py on the real tiny engine: every configuration is measured and reported (no timing asserts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xraysr.service.cli import main
from xraysr.service.pipeline import AnswerPlan, SRPipeline, UpscaleResult
from xraysr.service.tools.bench import markdown, run_bench

LOOP_2 = AnswerPlan("samples", 2, 1)


def test_bench_measures_in_process_http_and_torch_in_one_run(tiny_engine_dir: Path, tiny_checkpoint: Path) -> None:
    image = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    series = run_bench(
        tiny_engine_dir.parent, tiny_engine_dir.name, image, LOOP_2, runs=3, http=True, checkpoint=tiny_checkpoint
    )
    assert [entry.name for entry in series] == [
        "ONNX Runtime, in-process, fp32",
        "over HTTP (uvicorn, loopback), fp32",
        "PyTorch reference sampler (diffusers DDIM), in-process",
    ]
    assert set(series[0].seconds) == {"encode", "denoise", "vae_decode", "caller_wall"}
    assert set(series[1].seconds) == {
        "decode", "queue", "encode", "denoise", "vae_decode", "png", "consistency", "total", "caller_wall"
    }
    assert all(len(values) == 3 and min(values) >= 0 for entry in series for values in entry.seconds.values())
    assert all(min(entry.seconds["caller_wall"]) > 0 for entry in series)
    report = markdown(series, "xraysr bench --steps 2 --runs 3", LOOP_2, runs=3)
    assert "Command: `xraysr bench --steps 2 --runs 3`" in report
    assert "| ONNX Runtime, in-process, fp32 | denoise |" in report
    assert "| 1.00× |" in report


def test_bench_samples_runs_every_request_with_k_samples(
    tiny_engine_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    requested: list[int] = []
    real_upscale_batch = SRPipeline.upscale_batch

    def spy(self: SRPipeline, *args: Any, **kwargs: Any) -> list[UpscaleResult]:
        results = real_upscale_batch(self, *args, **kwargs)
        requested.extend(result.samples for result in results)
        return results

    monkeypatch.setattr(SRPipeline, "upscale_batch", spy)
    image = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    plan = AnswerPlan("samples", 2, 4)
    series = run_bench(tiny_engine_dir.parent, tiny_engine_dir.name, image, plan, runs=2, http=False)
    assert requested == [4, 4, 4]  # the warm-up at the measured batch, then the runs
    report = markdown(series, "xraysr bench --samples 4", plan, runs=2)
    assert "— the loop, 2 steps, 4 samples averaged per request, 2 runs each" in report


def test_bench_times_the_default_answer_and_both_precisions(
    model_with_int8: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no --steps or --samples it times the estimate, at FP32 and INT8 in one run, whichever auto chose."""
    estimates: list[int] = []
    real_estimate_batch = SRPipeline.estimate_batch

    def spy(self: SRPipeline, images: list[np.ndarray], *args: Any) -> list[UpscaleResult]:
        estimates.extend(1 for _ in images)
        return real_estimate_batch(self, images, *args)

    monkeypatch.setattr(SRPipeline, "estimate_batch", spy)
    flags = ["--engines-dir", str(model_with_int8.parent), "--model", model_with_int8.name, "--threads", "1"]
    assert main(["bench", "--runs", "2", "--no-http", "--precision", "int8", *flags]) == 0
    report = capsys.readouterr().out
    assert "the one-pass estimate (the default answer), 2 runs each" in report
    assert "| ONNX Runtime, in-process, int8 | denoise |" in report
    assert "| ONNX Runtime, in-process, fp32 | denoise |" in report
    assert len(estimates) == 2 * 3  # each precision: a warm-up and two runs


def test_bench_refuses_samples_it_cannot_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--samples", "9", "--no-http"]) == 2
    assert capsys.readouterr().err == "xraysr bench: error: --samples must be between 1 and 8, got 9\n"
