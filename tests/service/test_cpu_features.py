"""precision: auto — INT8 where the CPU has 8-bit dot products, FP32 elsewhere, and every place says which."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from xraysr.service import settings as settings_module
from xraysr.service.app import create_app
from xraysr.service.cpu_features import auto_precision, cpu_flags
from xraysr.service.settings import load_settings

VNNI = frozenset({"avx2", "avx512f", "avx512_vnni"})
AVX2 = frozenset({"avx2", "fma"})


def test_cpu_flags_reads_the_first_processor_and_survives_a_missing_file(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_vnni"}
    assert cpu_flags(tmp_path / "absent") == frozenset()


@pytest.mark.parametrize(
    ("backend", "has_int8", "flags", "expected", "why"),
    [
        ("onnxruntime", True, VNNI, "int8", "this CPU has avx512_vnni"),
        ("onnxruntime", True, frozenset({"amx_int8", "avx_vnni"}), "int8", "amx_int8, avx_vnni"),
        ("onnxruntime", True, AVX2, "fp32", "no VNNI or AMX"),
        ("onnxruntime", False, VNNI, "fp32", "no manifest.int8.json"),
        ("onnxruntime", True, frozenset(), "fp32", "no VNNI or AMX"),
        ("tensorrt", True, VNNI, "fp32", "on tensorrt"),
    ],
)
def test_auto_precision(backend: str, has_int8: bool, flags: frozenset[str], expected: str, why: str) -> None:
    precision, reason = auto_precision(backend, has_int8, flags)
    assert precision == expected and reason.startswith(f"auto: {expected}") and why in reason


def test_settings_resolve_auto_once_and_a_named_precision_is_kept(
    model_with_int8: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = {"engines_dir": model_with_int8.parent, "model": model_with_int8.name}
    monkeypatch.setattr(settings_module, "cpu_flags", lambda: VNNI)
    assert load_settings(**where).precision == "int8"
    assert load_settings(**where, precision="fp32").precision == "fp32"
    assert load_settings(**where, precision="fp32").precision_choice == "set"
    monkeypatch.setattr(settings_module, "cpu_flags", lambda: AVX2)
    chosen = load_settings(**where)
    assert (chosen.precision, chosen.precision_choice) == (
        "fp32", "auto: fp32, this CPU has no VNNI or AMX, where INT8 is slower than FP32"
    )


def test_readyz_metrics_and_the_log_say_which_precision_auto_chose(
    model_with_int8: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(settings_module, "cpu_flags", lambda: VNNI)
    settings = load_settings(engines_dir=model_with_int8.parent, model=model_with_int8.name)
    with caplog.at_level("INFO"), TestClient(create_app(settings), base_url="http://localhost") as client:
        ready = client.get("/readyz").json()
        metrics = client.get("/metrics").text
    assert (ready["precision"], ready["precision_choice"]) == ("int8", "auto: int8, this CPU has avx512_vnni")
    assert 'precision="int8"' in metrics
    assert "precision auto: int8, this CPU has avx512_vnni" in caplog.text
