"""service/tegrastats.py: exact parses of JetPack 4/5/6 lines, the exposition, and the reader against a fake
`tegrastats` placed first on PATH (no Jetson needed)."""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest

from xraysr.service import app as app_module
from xraysr.service.app_state import state_of
from xraysr.service.metrics import ServiceMetrics
from xraysr.service.settings import Settings
from xraysr.service.tegrastats import (
    TegrastatsCollector,
    TegrastatsSample,
    parse_line,
    start_from_environment,
    tegrastats_enabled,
)

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20

# Jetson Orin Nano 8 GB, JetPack 6 (L4T r36), 7 W mode: two cores off, a timestamp first, lower-case sensors,
# disabled CV clusters at -256 C.
ORIN_JETPACK6 = (
    "11-25-2026 07:59:58 RAM 2364/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) "
    "CPU [2%@1510,0%@1510,1%@1510,0%@1510,off,off] EMC_FREQ 0% GR3D_FREQ 37% cpu@45.5C soc2@44.843C "
    "soc0@45.125C gpu@45.25C tj@45.5C soc1@44.25C cv0@-256C "
    "VDD_IN 4427mW/4427mW VDD_CPU_GPU_CV 556mW/556mW VDD_SOC 1434mW/1434mW"
)
# Jetson Orin Nano, JetPack 5 (L4T r35): upper-case sensors, the GPU frequency in brackets.
ORIN_JETPACK5 = (
    "RAM 1614/7620MB (lfb 1x4MB) SWAP 0/3810MB (cached 0MB) CPU [0%@729,0%@729,0%@729,0%@729,off,off] "
    "EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305] VIC_FREQ 729 APE 174 CV0@-256C CPU@45.281C SOC2@43.406C SOC0@43.875C "
    "CV1@-256C GPU@-256C tj@45.281C SOC1@43.75C CV2@-256C VDD_IN 4126mW/4126mW VDD_CPU_GPU_CV 475mW/475mW "
    "VDD_SOC 1266mW/1266mW"
)
# Jetson Nano 4 GB, JetPack 4 (L4T r32): power in mW without a unit, the PMIC's fixed 100 C placeholder.
NANO_JETPACK4 = (
    "RAM 1642/3956MB (lfb 4x2MB) SWAP 0/1978MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
    "CPU [3%@102,2%@102,0%@102,0%@102] EMC_FREQ 0%@1600 GR3D_FREQ 12%@76 APE 25 PLL@27C CPU@29.5C PMIC@100C "
    "GPU@28.5C AO@35.5C thermal@29C POM_5V_IN 2056/2056 POM_5V_GPU 0/0 POM_5V_CPU 165/165"
)


def test_an_orin_jetpack6_line_parses_exactly() -> None:
    assert parse_line(ORIN_JETPACK6) == TegrastatsSample(
        ram_used_bytes=2364 * MIB,
        ram_total_bytes=7620 * MIB,
        swap_used_bytes=0,
        swap_total_bytes=3810 * MIB,
        cpu_load_ratios=(0.02, 0.0, 0.01, 0.0, None, None),
        gpu_load_ratio=0.37,
        gpu_frequency_mhz=None,
        temperatures_celsius={"cpu": 45.5, "soc2": 44.843, "soc0": 45.125, "gpu": 45.25, "tj": 45.5, "soc1": 44.25},
        power_watts={"VDD_IN": 4.427, "VDD_CPU_GPU_CV": 0.556, "VDD_SOC": 1.434},
    )


def test_an_orin_jetpack5_line_parses_exactly() -> None:
    sample = parse_line(ORIN_JETPACK5)
    assert (sample.ram_used_bytes, sample.gpu_load_ratio, sample.gpu_frequency_mhz) == (1614 * MIB, 0.0, 305)
    assert sample.temperatures_celsius == {"cpu": 45.281, "soc2": 43.406, "soc0": 43.875, "tj": 45.281, "soc1": 43.75}
    assert sample.power_watts == {"VDD_IN": 4.126, "VDD_CPU_GPU_CV": 0.475, "VDD_SOC": 1.266}


def test_a_nano_jetpack4_line_parses_exactly() -> None:
    assert parse_line(NANO_JETPACK4) == TegrastatsSample(
        ram_used_bytes=1642 * MIB,
        ram_total_bytes=3956 * MIB,
        swap_used_bytes=0,
        swap_total_bytes=1978 * MIB,
        cpu_load_ratios=(0.03, 0.02, 0.0, 0.0),
        gpu_load_ratio=0.12,
        gpu_frequency_mhz=76,
        temperatures_celsius={"pll": 27.0, "cpu": 29.5, "gpu": 28.5, "ao": 35.5, "thermal": 29.0},
        power_watts={"POM_5V_IN": 2.056, "POM_5V_GPU": 0.0, "POM_5V_CPU": 0.165},
    )


def test_missing_fields_are_none_or_empty() -> None:
    assert parse_line("RAM 100/200MB") == TegrastatsSample(ram_used_bytes=100 * MIB, ram_total_bytes=200 * MIB)
    assert parse_line("GR3D_FREQ 99%") == TegrastatsSample(gpu_load_ratio=0.99)
    assert parse_line("tj@50C") == TegrastatsSample(temperatures_celsius={"tj": 50.0})


@pytest.mark.parametrize("line", ["", "tegrastats: permission denied", "RAM lots", "CV0@-256C"])
def test_a_line_with_nothing_we_know_is_a_value_error(line: str) -> None:
    with pytest.raises(ValueError, match="no RAM, CPU, GR3D_FREQ, temperature or power field"):
        parse_line(line)


def test_the_latest_sample_is_exposed_in_the_prometheus_text() -> None:
    metrics = ServiceMetrics()
    collector = TegrastatsCollector()
    metrics.registry.register(collector)
    assert b"xraysr_jetson_gpu_load_ratio" not in generate_latest(metrics.registry)  # nothing before a sample
    collector.update(parse_line(NANO_JETPACK4))
    collector.update(parse_line(ORIN_JETPACK6))
    collector.count_malformed_line()
    text = metrics.exposition()[0].decode()
    for expected in (
        "xraysr_jetson_gpu_load_ratio 0.37",
        "xraysr_jetson_ram_used_bytes 2.478833664e+09",
        "xraysr_jetson_ram_total_bytes 7.99014912e+09",
        'xraysr_jetson_cpu_load_ratio{core="0"} 0.02',
        'xraysr_jetson_temperature_celsius{sensor="tj"} 45.5',
        'xraysr_jetson_power_watts{rail="VDD_IN"} 4.427',
        "xraysr_jetson_tegrastats_malformed_lines_total 1.0",
    ):
        assert expected + "\n" in text
    # The previous (Nano) sample's labels do not linger, and switched-off cores are absent.
    assert 'rail="POM_5V_IN"' not in text and 'core="4"' not in text


@pytest.mark.parametrize(("value", "enabled"), [("1", True), ("on", True), ("0", False), ("", False)])
def test_the_switch_reads_the_environment(value: str, enabled: bool) -> None:
    assert tegrastats_enabled({"XRAYSR_TEGRASTATS": value}) is enabled
    assert tegrastats_enabled({}) is False


def test_a_misspelt_switch_stops_start_up() -> None:
    with pytest.raises(ValueError, match="XRAYSR_TEGRASTATS must be 1 or 0"):
        tegrastats_enabled({"XRAYSR_TEGRASTATS": "enabled"})


@pytest.fixture
def fake_tegrastats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `tegrastats` first on PATH: writes its arguments to a file, prints a good line, garbage, a byte that
    is not UTF-8, another good line, then sleeps in a child process as the real one sleeps between samples."""
    script = tmp_path / "tegrastats"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > "{tmp_path}/arguments"\n'
        f"echo '{NANO_JETPACK4}'\n"
        "echo 'tegrastats: garbage'\n"
        "printf '\\377\\n'\n"
        f"echo '{ORIN_JETPACK6}'\n"
        "sleep 60\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("XRAYSR_TEGRASTATS", "1")
    return tmp_path


def _wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_reader_updates_the_gauges_and_stops(fake_tegrastats: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    with caplog.at_level(logging.WARNING, logger="xraysr.service.tegrastats"):
        reader = start_from_environment(registry)
        assert reader is not None
        _wait_for(lambda: b"VDD_IN" in generate_latest(registry))
    text = generate_latest(registry).decode()
    assert "xraysr_jetson_gpu_load_ratio 0.37\n" in text
    assert "xraysr_jetson_tegrastats_malformed_lines_total 2.0\n" in text
    assert "skipped a tegrastats line (no RAM, CPU, GR3D_FREQ, temperature or power field)" in caplog.text
    assert (fake_tegrastats / "arguments").read_text() == "--interval 1000\n"
    process, thread = reader._process, reader._thread
    assert process is not None and thread is not None

    started = time.monotonic()
    reader.stop()
    # The sleeping child held the pipe open; ending the whole session is what lets the thread finish at once.
    assert time.monotonic() - started < 3
    assert not thread.is_alive() and process.returncode is not None
    assert b"xraysr_jetson" not in generate_latest(registry)
    reader.stop()  # a second stop is harmless


def test_without_the_switch_or_the_binary_nothing_starts(
    fake_tegrastats: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("XRAYSR_TEGRASTATS", "0")
    assert start_from_environment(CollectorRegistry()) is None
    monkeypatch.setenv("XRAYSR_TEGRASTATS", "1")
    monkeypatch.setenv("PATH", str(fake_tegrastats / "empty"))
    with caplog.at_level(logging.WARNING, logger="xraysr.service.tegrastats"):
        assert start_from_environment(CollectorRegistry()) is None
    assert "no tegrastats is on PATH" in caplog.text


def test_a_tegrastats_that_cannot_start_leaves_the_metrics_off(
    fake_tegrastats: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (fake_tegrastats / "tegrastats").write_text("#!/nonexistent/interpreter\n")
    registry = CollectorRegistry()
    with caplog.at_level(logging.WARNING, logger="xraysr.service.tegrastats"):
        assert start_from_environment(registry) is None
    assert "could not start" in caplog.text
    assert b"xraysr_jetson" not in generate_latest(registry)


def test_the_app_exports_jetson_metrics_while_it_runs(fake_tegrastats: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The lifespan's model loading is replaced by a stand-in: this test is about the exporter's wiring.
    pipeline = SimpleNamespace(
        manifest=SimpleNamespace(model="cxr-default", version="test", precision="fp32"),
        runtime=SimpleNamespace(backend="onnxruntime", close=lambda: None),  # the Runtime protocol it is closed by
    )
    monkeypatch.setattr(app_module, "load_pipeline", lambda settings: pipeline)
    app = app_module.create_app(Settings(engines_dir=REPO / "engines", model="cxr-default"))
    with TestClient(app, base_url="http://localhost") as client:
        _wait_for(lambda: "xraysr_jetson_power_watts" in client.get("/metrics").text)
        assert 'xraysr_jetson_power_watts{rail="VDD_SOC"} 1.434' in client.get("/metrics").text
    assert b"xraysr_jetson" not in generate_latest(state_of(app).metrics.registry)
