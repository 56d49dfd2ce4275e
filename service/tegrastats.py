"""Jetson board metrics for Prometheus, read from NVIDIA's `tegrastats`.

On a Jetson the GPU shares the SoC with the CPU, so NVML (and everything built on it: nvidia-smi, DCGM,
Triton's GPU metrics) reports nothing. `tegrastats` is the one tool that prints GPU load, shared RAM,
temperatures and power rails on every JetPack. This module runs it in a background thread, parses each
line and exposes the latest values as ``xraysr_jetson_*`` gauges on the app's metrics registry.

Enabled by the environment variable ``XRAYSR_TEGRASTATS=1`` (and only if `tegrastats` is on PATH); off by
default so that a workstation or the CPU image never looks for it. A line that does not parse is logged,
counted in ``xraysr_jetson_tegrastats_malformed_lines_total`` and skipped: board metrics never stop the
service.

The line format differs between JetPack releases; these are the shapes handled (one line each, wrapped):

- JetPack 4 (Jetson Nano): ``RAM 1642/3956MB (lfb 4x2MB) SWAP 0/1978MB (cached 0MB) CPU [3%@102,off,...]
  EMC_FREQ 0%@1600 GR3D_FREQ 0%@76 APE 25 PLL@27C CPU@29.5C PMIC@100C ... POM_5V_IN 2056/2056 POM_5V_GPU 0/0``
  (power in mW without a unit, GPU load with its frequency in MHz);
- JetPack 5 (Orin): ``... GR3D_FREQ 0%@[305] ... CPU@45.281C tj@45.281C VDD_IN 4126mW/4126mW ...``;
- JetPack 6 (Orin): ``11-25-2026 08:00:00 RAM 2364/7620MB ... GR3D_FREQ 0% cpu@45.5C soc2@44.843C ...
  VDD_IN 4427mW/4427mW VDD_CPU_GPU_CV 556mW/556mW VDD_SOC 1434mW/1434mW`` (a timestamp first, lower-case
  sensor names, no GPU frequency).

Power rails print "current/average"; the gauge is the current value.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

logger = logging.getLogger(__name__)

ENABLE_VARIABLE = "XRAYSR_TEGRASTATS"
INTERVAL_MS = 1000

_UNIT_BYTES = {"kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
# Sensors that print a fixed placeholder rather than a reading: an Orin's disabled clusters report -256 C,
# and the Nano's PMIC sensor always reports 100 C. Exporting them would only trip temperature alerts.
_ABSENT_TEMPERATURE = -256.0
_PLACEHOLDER_SENSORS = frozenset({"pmic"})

_MEMORY = re.compile(r"\b(RAM|SWAP) (\d+)/(\d+)(kB|MB|GB)\b")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_CORE_LOAD = re.compile(r"^(\d+)%")
# "0%" (JetPack 6), "0%@76" (JetPack 4), "0%@[305]" or "0%@[305,305]" (JetPack 5).
_GPU = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?(\d+))?")
_TEMPERATURE = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
# "VDD_IN 4427mW/4427mW" (JetPack 5/6) or "POM_5V_IN 2056/2056" (JetPack 4). RAM/SWAP/IRAM end in a size
# unit ("7620MB"), so the look-ahead for a space or the end of the line keeps them out.
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")


@dataclass(frozen=True)
class TegrastatsSample:
    """One tegrastats line. A field the board or JetPack release does not print is None (or empty)."""

    ram_used_bytes: int | None = None
    ram_total_bytes: int | None = None
    swap_used_bytes: int | None = None
    swap_total_bytes: int | None = None
    cpu_load_ratios: tuple[float | None, ...] = ()
    """Per core, in [0, 1]; None for a core that is switched off."""
    gpu_load_ratio: float | None = None
    """GR3D (the integrated GPU) busy fraction over the interval, in [0, 1]."""
    gpu_frequency_mhz: int | None = None
    temperatures_celsius: dict[str, float] = field(default_factory=dict)
    """By sensor name, lower-cased so that JetPack 4's "CPU" and JetPack 6's "cpu" are one label."""
    power_watts: dict[str, float] = field(default_factory=dict)
    """Current draw by rail name (VDD_IN, POM_5V_IN, ...)."""


def parse_line(line: str) -> TegrastatsSample:
    """Parse one line of `tegrastats` output; ValueError if it holds none of the fields we know."""
    memory = {kind: (int(used), int(total), _UNIT_BYTES[unit]) for kind, used, total, unit in _MEMORY.findall(line)}
    ram, swap = memory.get("RAM"), memory.get("SWAP")

    cpu_load_ratios: tuple[float | None, ...] = ()
    cpu = _CPU.search(line)
    if cpu is not None:
        cores = [_CORE_LOAD.match(core.strip()) for core in cpu.group(1).split(",")]
        cpu_load_ratios = tuple(None if core is None else int(core.group(1)) / 100 for core in cores)

    gpu = _GPU.search(line)
    temperatures = {
        name.lower(): float(value)
        for name, value in _TEMPERATURE.findall(line)
        if float(value) != _ABSENT_TEMPERATURE and name.lower() not in _PLACEHOLDER_SENSORS
    }
    power = {name: int(current) / 1000 for name, current, _average in _RAIL.findall(line)}

    if ram is None and cpu is None and gpu is None and not temperatures and not power:
        raise ValueError("no RAM, CPU, GR3D_FREQ, temperature or power field")
    return TegrastatsSample(
        ram_used_bytes=None if ram is None else ram[0] * ram[2],
        ram_total_bytes=None if ram is None else ram[1] * ram[2],
        swap_used_bytes=None if swap is None else swap[0] * swap[2],
        swap_total_bytes=None if swap is None else swap[1] * swap[2],
        cpu_load_ratios=cpu_load_ratios,
        gpu_load_ratio=None if gpu is None else int(gpu.group(1)) / 100,
        gpu_frequency_mhz=None if gpu is None or gpu.group(2) is None else int(gpu.group(2)),
        temperatures_celsius=temperatures,
        power_watts=power,
    )


class TegrastatsCollector(Collector):
    """The latest sample as Prometheus gauges; nothing but the malformed-line counter before the first one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sample: TegrastatsSample | None = None
        self._malformed_lines = 0

    def update(self, sample: TegrastatsSample) -> None:
        with self._lock:
            self._sample = sample

    def count_malformed_line(self) -> None:
        with self._lock:
            self._malformed_lines += 1

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            sample, malformed_lines = self._sample, self._malformed_lines
        yield CounterMetricFamily(
            "xraysr_jetson_tegrastats_malformed_lines", "tegrastats lines that did not parse.", value=malformed_lines
        )
        if sample is None:
            return
        scalars = (
            ("xraysr_jetson_gpu_load_ratio", "Integrated GPU (GR3D) busy fraction, 0 to 1.", sample.gpu_load_ratio),
            ("xraysr_jetson_ram_used_bytes", "RAM in use (shared by CPU and GPU).", sample.ram_used_bytes),
            ("xraysr_jetson_ram_total_bytes", "RAM of the board.", sample.ram_total_bytes),
            ("xraysr_jetson_swap_used_bytes", "Swap in use.", sample.swap_used_bytes),
            ("xraysr_jetson_swap_total_bytes", "Swap configured.", sample.swap_total_bytes),
        )
        for name, documentation, value in scalars:
            if value is not None:
                yield GaugeMetricFamily(name, documentation, value=value)
        labelled = (
            (
                "xraysr_jetson_cpu_load_ratio",
                "CPU core busy fraction, 0 to 1 (cores that are off are absent).",
                "core",
                {str(core): load for core, load in enumerate(sample.cpu_load_ratios) if load is not None},
            ),
            (
                "xraysr_jetson_temperature_celsius",
                "Thermal zone temperature.",
                "sensor",
                sample.temperatures_celsius,
            ),
            ("xraysr_jetson_power_watts", "Power rail draw, current value.", "rail", sample.power_watts),
        )
        for name, documentation, label, values in labelled:
            if values:
                family = GaugeMetricFamily(name, documentation, labels=[label])
                for label_value, value in values.items():
                    family.add_metric([label_value], value)
                yield family


class TegrastatsReader:
    """Runs ``tegrastats --interval <ms>`` and feeds each line to a collector registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry, executable: str, interval_ms: int = INTERVAL_MS) -> None:
        self.registry, self.executable, self.interval_ms = registry, executable, interval_ms
        self.collector = TegrastatsCollector()
        self._process: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("the tegrastats reader is already running")
        self._stopping.clear()
        self.registry.register(self.collector)
        # A session of its own, so stop() ends tegrastats and anything it started without touching the server.
        try:
            self._process = subprocess.Popen(
                [self.executable, "--interval", str(self.interval_ms)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                errors="replace",
                bufsize=1,
                start_new_session=True,
            )
        except OSError:
            self.registry.unregister(self.collector)
            raise
        self._thread = threading.Thread(target=self._read, args=(self._process,), name="tegrastats", daemon=True)
        self._thread.start()
        logger.info("exporting Jetson metrics from %s every %d ms", self.executable, self.interval_ms)

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for raw_line in process.stdout:
            line = raw_line.strip()
            if not line:
                continue
            try:
                sample = parse_line(line)
            except ValueError as error:
                self.collector.count_malformed_line()
                logger.warning("skipped a tegrastats line (%s): %.200r", error, line)
                continue
            self.collector.update(sample)
        returncode = process.wait()
        if not self._stopping.is_set():
            logger.warning("tegrastats exited with status %s; Jetson metrics keep their last values", returncode)

    def stop(self, timeout: float = 5.0) -> None:
        """End tegrastats, wait for the reader thread and take the gauges off the registry."""
        process, thread = self._process, self._thread
        if process is None or thread is None:
            return
        self._stopping.set()
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it ended between poll() and here
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout)
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("the tegrastats reader thread did not finish within %.1f s", timeout)
        assert process.stdout is not None
        process.stdout.close()
        self.registry.unregister(self.collector)
        self._process = self._thread = None


def tegrastats_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """XRAYSR_TEGRASTATS: 1/true/yes/on or 0/false/no/off (or unset); anything else stops start-up."""
    value = (os.environ if environ is None else environ).get(ENABLE_VARIABLE, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"{ENABLE_VARIABLE} must be 1 or 0 (true/false, yes/no, on/off), got {value!r}")


def start_from_environment(registry: CollectorRegistry) -> TegrastatsReader | None:
    """A running reader when XRAYSR_TEGRASTATS is on and `tegrastats` is on PATH, else None."""
    if not tegrastats_enabled():
        return None
    executable = shutil.which("tegrastats")
    if executable is None:
        logger.warning(
            "%s is on but no tegrastats is on PATH (in a container, mount the host's /usr/bin/tegrastats); "
            "Jetson metrics are off",
            ENABLE_VARIABLE,
        )
        return None
    reader = TegrastatsReader(registry, executable)
    try:
        reader.start()
    except OSError as error:
        logger.warning("could not start %s (%s); Jetson metrics are off", executable, error)
        return None
    return reader
