"""service/bench.py on the real tiny engine: every configuration is measured and reported (no timing asserts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.bench import markdown, run_bench


def test_bench_measures_in_process_http_and_torch_in_one_run(tiny_engine_dir: Path, tiny_checkpoint: Path) -> None:
    image = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    series = run_bench(
        tiny_engine_dir.parent, tiny_engine_dir.name, image, steps=2, runs=3, http=True, checkpoint=tiny_checkpoint
    )
    assert [entry.name for entry in series] == [
        "ONNX Runtime, in-process, fp32",
        "over HTTP (uvicorn, loopback), fp32",
        "PyTorch reference sampler (diffusers DDIM), in-process",
    ]
    assert set(series[0].seconds) == {"encode", "denoise", "vae_decode", "caller_wall"}
    assert set(series[1].seconds) == {"decode", "encode", "denoise", "vae_decode", "png", "total", "caller_wall"}
    assert all(len(values) == 3 and min(values) >= 0 for entry in series for values in entry.seconds.values())
    assert all(min(entry.seconds["caller_wall"]) > 0 for entry in series)
    report = markdown(series, "xraysr bench --steps 2 --runs 3", steps=2, runs=3)
    assert "Command: `xraysr bench --steps 2 --runs 3`" in report
    assert "| ONNX Runtime, in-process, fp32 | denoise |" in report
    assert "| 1.00× |" in report
