"""jetson/gpu_check.sh on a stand-in board: TensorRT and pycuda are small fake modules, `xraysr build-engines`
a fake that logs its arguments, and `xraysr serve --backend tensorrt` the real server on ONNX Runtime (fp16 is
served as fp32), so the script's curl, PSNR, SIGTERM and table run against the real API."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "jetson" / "gpu_check.sh"
ORIN_RELEASE = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8\n"

# The stand-in `xraysr`. serve: --backend tensorrt becomes onnxruntime, --trt-cache-dir is dropped, and
# FAKE_SERVE_AS maps a precision to the one really served (fp16 has no ONNX Runtime form: fp32). FAKE_SERVE_FAIL
# makes serve die before it is ready; FAKE_STOP_STATUS makes it outlive SIGTERM's clean exit with that status.
FAKE_XRAYSR = """#!{python}
import os
import signal
import subprocess
import sys

args = sys.argv[1:]
real = [{python!r}, "-m", "xraysr.service.cli"]
with open(os.environ["FAKE_CALLS"], "a") as calls:
    calls.write(" ".join(args) + "\\n")
if args[:1] == ["build-engines"]:
    precision = args[args.index("--precision") + 1]
    if precision in os.environ.get("FAKE_BUILD_FAIL", "").split():
        print("[TRT] [E] ModelImporter: This version of TensorRT does not support cubic interpolation", file=sys.stderr)
        sys.exit(1)
    print(f"built unet ({{precision}})")
    sys.exit(0)
if args[:1] == ["serve"]:
    if os.environ.get("FAKE_SERVE_FAIL"):
        print("RuntimeError: TensorRT could not deserialize the engine for unet", file=sys.stderr)
        sys.exit(1)
    cache = args.index("--trt-cache-dir")
    del args[cache : cache + 2]
    args[args.index("--backend") + 1] = "onnxruntime"
    precision = args.index("--precision") + 1
    mapping = dict(pair.split("=") for pair in os.environ.get("FAKE_SERVE_AS", "fp16=fp32").split(","))
    args[precision] = mapping.get(args[precision], args[precision])
    if os.environ.get("FAKE_STOP_STATUS"):
        server = subprocess.Popen(real + args)
        signal.signal(signal.SIGTERM, lambda number, frame: server.send_signal(number))
        server.wait()
        print("Fatal Python error: Segmentation fault", file=sys.stderr)
        sys.exit(int(os.environ["FAKE_STOP_STATUS"]))
os.execv(real[0], real + args)
"""

# tegrastats of an Orin Nano on JetPack 6, one line each half second until it is stopped.
FAKE_TEGRASTATS = """#!/bin/sh
while :; do
    echo "11-28-2026 13:40:00 RAM 2151/7620MB (lfb 4x4MB) SWAP 0/3810MB CPU [3%@729,1%@729] GR3D_FREQ 0% \
cpu@47.5C gpu@46.9C VDD_IN 4012mW/4012mW VDD_CPU_GPU_CV 480mW/480mW VDD_SOC 1202mW/1202mW"
    sleep 0.5
done
"""


@dataclass
class Run:
    returncode: int
    table: dict[str, tuple[str, str]]  # check → (result, detail)
    stderr: str
    calls: list[str]


@pytest.fixture
def board(tmp_path: Path) -> Path:
    """bin/ with the fake xraysr and tegrastats, python/ with fake tensorrt 10.3.0 and pycuda, an r36.4.3 release."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "xraysr").write_text(FAKE_XRAYSR.format(python=sys.executable))
    (bin_dir / "tegrastats").write_text(FAKE_TEGRASTATS)
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    fake_tensorrt(tmp_path, "10.3.0")
    pycuda = tmp_path / "python" / "pycuda"
    pycuda.mkdir(parents=True)
    (pycuda / "__init__.py").write_text('VERSION_TEXT = "2024.1.2"\n')
    (pycuda / "driver.py").write_text(
        "def init():\n    pass\n\n\ndef get_driver_version():\n    return 12060\n\n\n"
        "def get_version():\n    return (12, 6, 0)\n\n\nclass Device:\n    def __init__(self, ordinal):\n"
        "        pass\n\n    def name(self):\n        return 'Orin'\n\n    def compute_capability(self):\n"
        "        return (8, 7)\n"
    )
    (tmp_path / "nv_tegra_release").write_text(ORIN_RELEASE)
    return tmp_path


def fake_tensorrt(board: Path, version: str, numpy_error: str = "") -> None:
    """A `tensorrt` whose Weights hold a numpy array as the real bindings do, or raise numpy_error (what bindings
    built against NumPy 1 do under NumPy 2)."""
    package = board / "python" / "tensorrt"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(
        f"__version__ = {version!r}\n\n\nclass Weights:\n    def __init__(self, array):\n"
        + (f"        raise ImportError({numpy_error!r})\n" if numpy_error else "")
        + "        self._array = array.copy()\n        self.size = array.size\n\n"
        "    def numpy(self):\n        return self._array\n"
    )


def gpu_check(board: Path, *args: str, tegrastats: bool = True, **env: str) -> Run:
    bin_dir = board / "bin"
    if not tegrastats:
        (bin_dir / "tegrastats").unlink()
    # The fakes first, then this interpreter's folder (python3 with numpy and Pillow), then the system's.
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"])
    environ = {
        "PATH": path,
        "PYTHONPATH": str(board / "python"),
        "NV_TEGRA_RELEASE": str(board / "nv_tegra_release"),
        "TMPDIR": str(board),
        "HOME": str(board),
        "FAKE_CALLS": str(board / "calls"),
        **env,
    }
    command = ["bash", str(SCRIPT), "--steps", "10", *args]
    result = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=300)
    table: dict[str, tuple[str, str]] = {}
    lines = result.stdout.splitlines()
    if lines:
        assert [cell.strip() for cell in lines[0].split("|")] == ["", "check", "result", "detail", ""], result.stdout
        for line in lines[2:]:
            check, outcome, detail = (cell.strip() for cell in line.strip("|").split(" | ", 2))
            table[check] = (outcome, detail.rstrip(" |"))
    calls = (board / "calls").read_text().splitlines() if (board / "calls").exists() else []
    return Run(result.returncode, table, result.stderr, calls)


def results(run: Run) -> dict[str, str]:
    return {check: outcome for check, (outcome, _) in run.table.items()}


@pytest.mark.slow  # real ONNX Runtime servers and references
def test_a_working_board_passes_every_check(board: Path) -> None:
    # With an API key in the environment the server wants the bearer token: the script must send it.
    run = gpu_check(board, XRAYSR_API_KEY="k" * 24)
    assert run.returncode == 0, run.stderr
    assert list(run.table) == [
        "l4t",
        "tensorrt",
        "pycuda",
        "cuda",
        "numpy",
        "xraysr",
        "tegrastats idle",
        "build fp16",
        "build int8",
        "serve fp16",
        "match fp16",
        "tegrastats load",
        "stop fp16",
        "serve int8",
        "match int8",
        "stop int8",
    ]
    assert set(results(run).values()) == {"PASS"}
    assert run.table["l4t"][1] == f"r36.4.3, JetPack 6.2 ({board / 'nv_tegra_release'})"
    assert run.table["tensorrt"][1] == "10.3.0 (expected 10.3)"
    assert run.table["cuda"][1] == "driver 12.6 (pycuda built for 12.6), Orin, compute capability 8.7"
    assert run.table["numpy"][1].endswith(", and TensorRT's bindings take its arrays")
    assert run.table["build int8"][1].endswith(" s; built unet (int8)")  # the time, then its last line
    assert run.table["tegrastats idle"][1] == "RAM 2151/7620MB GR3D_FREQ 0% VDD_IN 4012mW/4012mW"
    # ONNX Runtime on both sides: the same seed gives the same bytes.
    assert run.table["match fp16"][1] == "identical against onnxruntime fp32 (seed 7, 10 steps), at least 35 dB"
    assert run.table["match int8"][1] == "identical against onnxruntime int8 (seed 7, 10 steps), at least 30 dB"
    assert run.table["stop int8"][1].startswith("exit 0 ") and "nothing wrong in its log" in run.table["stop int8"][1]
    builds = [call for call in run.calls if call.startswith("build-engines")]
    (work,) = board.glob("xraysr-gpu-check.*")
    cache = work / "engines-cache"
    assert builds == [f"build-engines --precision {p} --trt-cache-dir {cache}" for p in ("fp16", "int8")]
    serves = [call.split(" --port ")[1].split(" ", 1)[1] for call in run.calls if call.startswith("serve")]
    assert serves == [f"--backend tensorrt --precision {p} --trt-cache-dir {cache}" for p in ("fp16", "int8")]
    assert all(call.startswith("serve --host 127.0.0.1 --port ") for call in run.calls if call.startswith("serve"))
    assert not cache.exists()  # the engines go, without --keep; the logs stay
    assert (work / "serve-fp16.log").is_file()


def test_a_tensorrt_other_than_the_release_ships_fails(board: Path) -> None:
    fake_tensorrt(board, "8.6.2")
    run = gpu_check(board, "--versions-only")
    assert run.returncode == 1
    assert run.table["tensorrt"] == (
        "FAIL",
        "8.6.2, expected 10.3: a base image or JetPack other than the one intended",
    )
    passed = {name: "PASS" for name in ("l4t", "pycuda", "cuda", "numpy", "xraysr")}
    assert results(run) == passed | {"tensorrt": "FAIL"}
    assert run.calls == ["--version"]  # --versions-only builds and serves nothing


def test_numpy_that_tensorrts_bindings_refuse_fails(board: Path) -> None:
    fake_tensorrt(board, "10.3.0", numpy_error="numpy.core.multiarray failed to import")
    run = gpu_check(board, "--versions-only")
    assert run.returncode == 1
    outcome, detail = run.table["numpy"]
    assert outcome == "FAIL"
    assert detail.endswith(
        ": tensorrt.Weights refused a numpy array (ImportError: numpy.core.multiarray failed to import); "
        "JetPack's TensorRT bindings were built against NumPy 1: pip install 'numpy<2'"
    )
    assert run.table["tensorrt"][0] == "PASS"


def test_the_images_promise_outranks_the_release_table(board: Path) -> None:
    fake_tensorrt(board, "8.6.2")
    run = gpu_check(board, "--versions-only", XRAYSR_EXPECTED_TENSORRT="8.6")
    assert run.returncode == 0, run.stdout
    assert run.table["tensorrt"] == ("PASS", "8.6.2 (expected 8.6)")


def test_a_failed_build_fails_and_its_precision_is_not_served(board: Path) -> None:
    run = gpu_check(board, tegrastats=False, FAKE_BUILD_FAIL="fp16 int8")
    assert run.returncode == 1
    for precision in ("fp16", "int8"):  # the second build is tried after the first failed
        assert run.table[f"build {precision}"] == (
            "FAIL",
            "exit 1: [TRT] [E] ModelImporter: This version of TensorRT does not support cubic interpolation",
        )
        assert run.table[f"serve {precision}"] == ("SKIP", "its engines did not build")
        assert f"match {precision}" not in run.table
    assert not any(call.startswith("serve") for call in run.calls)


@pytest.mark.slow  # real ONNX Runtime servers and references
def test_an_output_unlike_onnx_runtimes_fails_with_its_psnr(board: Path) -> None:
    # The "TensorRT" fp16 server really serves the INT8 model: close to the fp32 reference, but not identical.
    run = gpu_check(board, "--precisions", "fp16", "--min-psnr-fp16", "99", tegrastats=False, FAKE_SERVE_AS="fp16=int8")
    assert run.returncode == 1
    outcome, detail = run.table["match fp16"]
    assert outcome == "FAIL" and detail.endswith(" against onnxruntime fp32 (seed 7, 10 steps), below 99 dB")
    assert 20 < float(detail.split(" dB")[0]) < 99


def test_a_server_that_cannot_load_its_engines_fails(board: Path) -> None:
    run = gpu_check(board, "--precisions", "fp16", tegrastats=False, FAKE_SERVE_FAIL="1")
    assert run.returncode == 1
    assert run.table["serve fp16"] == (
        "FAIL",
        "exited 1 before it was ready: RuntimeError: TensorRT could not deserialize the engine for unet",
    )
    assert "match fp16" not in run.table and "stop fp16" not in run.table


@pytest.mark.slow  # real ONNX Runtime servers and references
def test_a_crash_on_sigterm_fails_the_stop(board: Path) -> None:
    run = gpu_check(board, "--precisions", "fp16", tegrastats=False, FAKE_STOP_STATUS="139")
    assert run.returncode == 1
    outcome, detail = run.table["stop fp16"]
    assert (outcome, detail) == ("FAIL", "exit status 139 after SIGTERM: Fatal Python error: Segmentation fault")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--precisions", "bf16"), "--precisions takes fp32, fp16 and int8, got bf16"),
        (("--seed",), "--seed needs a value"),
        (("--image", "/nonexistent.png"), "--image /nonexistent.png is not a readable file"),
        (("--frobnicate", "1"), "unknown argument --frobnicate"),
    ],
)
def test_a_wrong_argument_exits_2_before_any_work(board: Path, args: tuple[str, ...], message: str) -> None:
    run = gpu_check(board, *args)
    assert run.returncode == 2 and message in run.stderr
    assert run.calls == [] and not list(board.glob("xraysr-gpu-check.*"))
