"""jetson/: build_engines.sh against a fake trtexec (the exact command lines it would run on an Orin and a
Nano), power_mode.sh against fake nvpmodel/jetson_clocks, and the systemd unit's structure."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from xraysr.service.manifest import MAX_SAMPLES
from xraysr.service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
JETSON = REPO / "jetson"
ORIN_COMPATIBLE = b"nvidia,p3768-0000+p3767-0005\0nvidia,p3767-0005\0nvidia,tegra234\0"
NANO_COMPATIBLE = b"nvidia,p3450-0000\0nvidia,jetson-nano\0nvidia,tegra210\0"


def _executable(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


# What trtexec prints: its banner (with the TensorRT version) on --help, a latency summary after a build.
TRTEXEC_BANNER = "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --help"
GPU_COMPUTE = "[I] GPU Compute Time: min = 1.1 ms, max = 2.3 ms, mean = 1.3 ms, median = 1.25 ms, percentile(90%) = 2"


@pytest.fixture
def board(tmp_path: Path) -> Path:
    """A folder with a fake trtexec (TensorRT 10.3: it knows --memPoolSize) that logs its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(
        bin_dir / "trtexec",
        f'if [ "$1" = --help ]; then echo "{TRTEXEC_BANNER}"; echo "  --memPoolSize=poolspec"; exit 0; fi\n'
        f'echo "$*" >> "{tmp_path}/trtexec.calls"\necho "{GPU_COMPUTE}"\necho "&&&& PASSED TensorRT.trtexec"\n',
    )
    return tmp_path


def _build(board: Path, compatible: bytes | None, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    compatible_file = board / "compatible"
    if compatible is not None:
        compatible_file.write_bytes(compatible)
    environ = {
        "PATH": f"{board / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "DEVICE_TREE_COMPATIBLE": str(compatible_file),
        "SOC_ID_FILE": str(board / "soc_id"),
        **env,
    }
    command = ["bash", str(JETSON / "build_engines.sh"), "--out", str(board / "out"), *args]
    return subprocess.run(command, cwd=REPO, env=environ, capture_output=True, text=True, timeout=30)


def _calls(board: Path) -> list[str]:
    return (board / "trtexec.calls").read_text().splitlines()


def _table(stdout: str) -> list[list[str]]:
    """The result table's rows (header dropped); columns are two or more spaces apart, the last may hold spaces."""
    lines = stdout.splitlines()
    assert re.split(" {2,}", lines[0]) == ["component", "precision", "result", "gpu median", "plan or log"], stdout
    return [re.split(" {2,}", line, maxsplit=4) for line in lines[1:]]


def test_an_orin_builds_fp16_engines_with_the_manifests_input_shapes(board: Path) -> None:
    result = _build(board, ORIN_COMPATIBLE, "--precision", "fp16", "--max-batch", "2")
    assert result.returncode == 0, result.stderr
    out = board / "out"
    # As the service builds it (served_components): the step graph in place of the UNet, which is never built.
    assert _table(result.stdout) == [
        [name, "fp16", "built", "1.25 ms", f"{out}/{name}-fp16.plan"] for name in ("encoder", "decoder", "unet_step")
    ]
    assert len(_calls(board)) == 3 and not [call for call in _calls(board) if "/unet.onnx" in call]
    # One timing cache per TensorRT version (from trtexec's banner) and compute capability.
    step_shapes = "sample:{0}x16x64x64,timestep:{0},lr_latent:{0}x16x64x64,alpha_t:{0},alpha_prev:{0}"
    assert _calls(board)[2] == (
        f"--onnx=engines/cxr-default/unet_step.onnx --saveEngine={out}/unet_step-fp16.plan --fp16 "
        f"--memPoolSize=workspace:1024 --timingCacheFile={out}/timing-trt100300-sm87.cache "
        f"--minShapes={step_shapes.format(1)} --optShapes={step_shapes.format(1)} --maxShapes={step_shapes.format(2)}"
    )
    assert "PASSED" in (out / "unet_step-fp16.log").read_text()


def test_the_default_batch_range_is_the_servers(board: Path) -> None:
    """`xraysr serve` batches up to MAX_SAMPLES samples, tuned at one (the service's optimisation profile)."""
    result = _build(board, ORIN_COMPATIBLE, "--precision", "fp32")
    assert result.returncode == 0, result.stderr
    decoder = _calls(board)[1]
    assert decoder.startswith("--onnx=engines/cxr-default/decoder.onnx ")
    shapes = f"--minShapes=hr_latent:1x16x64x64 --optShapes=hr_latent:1x16x64x64 --maxShapes=hr_latent:{MAX_SAMPLES}x16"
    assert shapes in decoder
    assert "--fp16" not in decoder and "--int8" not in decoder
    result = _build(board, ORIN_COMPATIBLE, "--precision", "fp32", "--opt-batch", "4")
    assert "--optShapes=hr_latent:4x16x64x64 " in [call for call in _calls(board) if "/decoder.onnx " in call][-1]
    result = _build(board, ORIN_COMPATIBLE, "--opt-batch", "9")
    assert result.returncode == 1 and "--opt-batch must be between 1 and --max-batch (8), got 9" in result.stderr


def test_int8_builds_only_the_quantized_components_with_int8_and_the_rest_at_fp32(board: Path) -> None:
    """As the service does (trt_build.component_precision): INT8 for the files the manifest marks int8. The shipped
    manifest.int8.json marks unet and unet_step int8; the device loop builds unet_step only."""
    result = _build(board, ORIN_COMPATIBLE)  # the defaults: cxr-default at int8
    assert result.returncode == 0, result.stderr
    model_dir = "engines/cxr-default"
    encoder, decoder, unet_step = _calls(board)
    assert encoder.startswith(f"--onnx={model_dir}/encoder.onnx --saveEngine={board}/out/encoder-fp32.plan --memPool")
    assert decoder.startswith(f"--onnx={model_dir}/decoder.onnx --saveEngine={board}/out/decoder-fp32.plan --memPool")
    assert unet_step.startswith(
        f"--onnx={model_dir}/unet_step.int8.onnx --saveEngine={board}/out/unet_step-int8.plan --int8 --fp16 "
    )
    assert [row[:3] for row in _table(result.stdout)] == [
        ["encoder", "fp32", "built"],
        ["decoder", "fp32", "built"],
        ["unet_step", "int8", "built"],
    ]


def test_a_model_without_a_step_graph_builds_its_unet(board: Path) -> None:
    """An export without unet_step (`xraysr export` with step_graph off, or from before it): the UNet is built."""
    model_dir = board / "engines" / "cxr-q"
    model_dir.mkdir(parents=True)
    manifest = json.loads((REPO / "engines" / "cxr-default" / "manifest.json").read_text())
    del manifest["components"]["unet_step"]
    manifest["components"]["unet"]["path"] = "unet.int8.onnx"
    manifest["components"]["unet"]["precision"] = "int8"
    (model_dir / "manifest.int8.json").write_text(json.dumps(manifest))
    result = _build(board, ORIN_COMPATIBLE, "--engines-dir", str(board / "engines"), "--model", "cxr-q")
    assert result.returncode == 0, result.stderr
    encoder, unet, decoder = _calls(board)
    assert encoder.startswith(f"--onnx={model_dir}/encoder.onnx --saveEngine={board}/out/encoder-fp32.plan --memPool")
    assert unet.startswith(f"--onnx={model_dir}/unet.int8.onnx --saveEngine={board}/out/unet-int8.plan --int8 --fp16 ")
    assert decoder.startswith(f"--onnx={model_dir}/decoder.onnx --saveEngine={board}/out/decoder-fp32.plan --memPool")
    assert [row[:3] for row in _table(result.stdout)] == [
        ["encoder", "fp32", "built"],
        ["unet", "int8", "built"],
        ["decoder", "fp32", "built"],
    ]


def test_int8_without_a_quantized_model_says_how_to_make_one(board: Path) -> None:
    shutil.copytree(
        REPO / "engines" / "cxr-default", board / "engines" / "fp32-only", ignore=shutil.ignore_patterns("*.int8.*")
    )
    result = _build(
        board, ORIN_COMPATIBLE, "--precision", "int8", "--engines-dir", str(board / "engines"), "--model", "fp32-only"
    )
    assert result.returncode == 1
    assert "manifest.int8.json does not exist: quantize the model first (xraysr quantize)" in result.stderr


def test_the_original_nano_falls_back_from_int8_to_fp16(board: Path) -> None:
    result = _build(board, NANO_COMPATIBLE, "--precision", "int8")
    assert result.returncode == 0, result.stderr
    assert "compute capability 5.3 has no INT8 in TensorRT: building fp16 instead" in result.stderr
    assert all(" --fp16 " in call and "--int8" not in call for call in _calls(board))
    assert _calls(board)[0].startswith("--onnx=engines/cxr-default/encoder.onnx ")


def test_the_chip_id_stands_in_for_a_masked_device_tree_and_old_trtexec_gets_workspace(board: Path) -> None:
    (board / "soc_id").write_text("33\n")
    _executable(board / "bin" / "trtexec", f'[ "$1" = --help ] && exit 0\necho "$*" >> "{board}/trtexec.calls"\n')
    result = _build(board, None, "--precision", "fp16")
    assert result.returncode == 0, result.stderr
    assert "for compute capability 5.3" in result.stderr
    assert all("--workspace=1024 " in call and "memPoolSize" not in call for call in _calls(board))
    # No banner, no version in the timing cache's name; no latency summary, a dash in the table.
    assert all(f"--timingCacheFile={board}/out/timing-sm53.cache " in call for call in _calls(board))
    assert [row[3] for row in _table(result.stdout)] == ["-", "-", "-"]


def test_a_long_help_text_is_read_whole_before_it_is_searched(board: Path) -> None:
    """--memPoolSize early in ~2 MB of help: `--help | grep -q` stops reading there, the trtexec process (awk
    here, by exec) dies of SIGPIPE, and under pipefail the TensorRT 10 option is taken for absent: the old
    pipe passed --workspace, which TensorRT 10's trtexec refuses, on every run of this test."""
    _executable(
        board / "bin" / "trtexec",
        'if [ "$1" = --help ]; then echo "  --memPoolSize=poolspec"; '
        "exec awk 'BEGIN { for (i = 0; i < 100000; i++) print \"  --someOption   text\" }'; fi\n"
        f'echo "$*" >> "{board}/trtexec.calls"\n',
    )
    result = _build(board, ORIN_COMPATIBLE, "--precision", "fp16")
    assert result.returncode == 0, result.stderr
    assert all("--memPoolSize=workspace:1024 " in call for call in _calls(board))


def test_an_unknown_board_asks_for_the_capability(board: Path) -> None:
    if shutil.which("nvidia-smi", path="/usr/bin:/bin"):
        pytest.skip("this machine has nvidia-smi, which answers instead")
    result = _build(board, b"acme,board\0", "--precision", "fp16", PATH=f"{board / 'bin'}:/usr/bin:/bin")
    assert result.returncode == 1
    assert "set XRAYSR_COMPUTE_CAPABILITY" in result.stderr
    assert _build(board, b"acme,board\0", "--precision", "fp16", XRAYSR_COMPUTE_CAPABILITY="8.7").returncode == 0


def test_a_failed_component_is_reported_and_the_others_still_build(board: Path) -> None:
    """A component trtexec cannot build is reported with the log's last error, and the others still build: here an
    encoder with a cubic Resize on TensorRT 8.2 (the shipped encoder's bicubic was one until it became MatMuls)."""
    _executable(
        board / "bin" / "trtexec",
        '[ "$1" = --help ] && exit 0\n'
        f'echo "$*" >> "{board}/trtexec.calls"\n'
        'case "$1" in *encoder*) echo "[E] [TRT] ModelImporter.cpp:3442: This version of TensorRT does not support'
        ' cubic interpolation!"; exit 1 ;; esac\n',
    )
    result = _build(board, NANO_COMPATIBLE, "--precision", "fp16")
    assert result.returncode == 1
    assert len(_calls(board)) == 3
    out = board / "out"
    assert _table(result.stdout) == [
        [
            "encoder",
            "fp16",
            "FAILED",
            "-",
            f"{out}/encoder-fp16.log: [E] [TRT] ModelImporter.cpp:3442: This version of TensorRT does not support"
            " cubic interpolation!",
        ],
        ["decoder", "fp16", "built", "-", f"{out}/decoder-fp16.plan"],
        ["unet_step", "fp16", "built", "-", f"{out}/unet_step-fp16.plan"],
    ]
    assert "trtexec failed on encoder.onnx" in result.stderr and "not every component built" in result.stderr


# --- power_mode.sh -----------------------------------------------------------------------------------------

# An excerpt of an Orin Nano's /etc/nvpmodel.conf (JetPack 6.0).
ORIN_NANO_CONF = (
    "< POWER_MODEL ID=0 NAME=15W >\nCPU_ONLINE CORE_0 1\n< POWER_MODEL ID=1 NAME=7W >\nCPU_ONLINE CORE_4 0\n"
    "< PM_CONFIG DEFAULT=0 >\n"
)


def _power_mode(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("nvpmodel", "jetson_clocks"):
        _executable(bin_dir / tool, f'echo {tool} "$@" >> "{tmp_path}/calls"\n')
    (tmp_path / "nvpmodel.conf").write_text(ORIN_NANO_CONF)
    environ = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "NVPMODEL_CONF": str(tmp_path / "nvpmodel.conf")}
    result = subprocess.run(
        ["bash", str(JETSON / "power_mode.sh"), *args], env=environ, capture_output=True, text=True, timeout=10
    )
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return result, calls


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("power_mode.sh refuses to run without root")


@pytest.mark.usefixtures("as_root")
def test_a_mode_name_is_looked_up_in_the_boards_configuration(tmp_path: Path) -> None:
    result, calls = _power_mode(tmp_path, "7w")
    assert result.returncode == 0, result.stderr
    assert calls == ["nvpmodel -m 1", "jetson_clocks", "nvpmodel -q"]
    assert "power_mode.sh: nvpmodel -m 1 (7W)" in result.stdout


@pytest.mark.usefixtures("as_root")
def test_an_id_is_taken_as_given_and_clocks_can_be_left_alone(tmp_path: Path) -> None:
    result, calls = _power_mode(tmp_path, "0", "--no-clocks")
    assert result.returncode == 0, result.stderr
    assert calls == ["nvpmodel -m 0", "nvpmodel -q"]


@pytest.mark.usefixtures("as_root")
def test_a_mode_the_board_lacks_lists_the_ones_it_has(tmp_path: Path) -> None:
    result, calls = _power_mode(tmp_path, "MAXN")
    assert result.returncode == 1 and calls == []
    assert "no mode MAXN in" in result.stderr and "0 15W\n1 7W" in result.stderr


def test_the_modes_are_listed_without_root(tmp_path: Path) -> None:
    result, calls = _power_mode(tmp_path, "--list")
    assert result.returncode == 0 and calls == []
    assert result.stdout.splitlines()[1:] == ["0 15W", "1 7W"]


# --- the systemd unit and its environment file -------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections → key → values (a key may repeat); continuation lines joined, comments dropped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{line!r} is outside a section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_the_unit_runs_the_container_and_restarts_on_failure() -> None:
    unit = parse_unit((JETSON / "xraysr.service").read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["Restart"] == ["on-failure"] and service["RestartSec"] == ["30"]
    # Not forever: a failure that keeps coming back stops after 5 starts in an hour (first starts build engines
    # for minutes, so the window is long) ...
    assert (unit["Unit"]["StartLimitIntervalSec"], unit["Unit"]["StartLimitBurst"]) == (["3600"], ["5"])
    # ... and the failures a restart cannot fix are not retried at all: see the next test.
    assert service["RestartPreventExitStatus"] == ["2 78"]
    assert service["EnvironmentFile"] == ["/etc/xraysr/xraysr.env"]
    (exec_start,) = service["ExecStart"]
    assert exec_start.startswith("/usr/bin/docker run --rm --name xraysr --runtime nvidia ")
    assert "--volume xraysr-engines:/var/lib/xraysr/engines-cache" in exec_start
    assert "--env-file /etc/xraysr/xraysr.env" in exec_start and exec_start.endswith("${XRAYSR_IMAGE}")
    assert "docker.service" in unit["Unit"]["Requires"][0]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_exit_statuses_the_unit_does_not_retry_are_the_permanent_ones(tmp_path: Path) -> None:
    """78 is the entrypoint's "cannot work as started" (docker/entrypoint.sh, tested in tests/docker); 2 is what
    xraysr answers a refused setting with, such as building engines in a container run without --runtime nvidia."""
    assert "readonly EX_CONFIG=78\n" in (REPO / "docker" / "entrypoint.sh").read_text()
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here: build-engines would build instead of refusing")
    build = ["build-engines", "--precision", "fp16", "--trt-cache-dir", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-m", "xraysr.service.cli", *build],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XRAYSR_HOST": "127.0.0.1"},
    )
    assert result.returncode == 2
    # One line that names what is missing (its wording belongs to the CLI's tests).
    assert result.stderr.startswith("xraysr build-engines: error: ") and "TensorRT" in result.stderr


def test_systemd_finds_nothing_wrong_with_the_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    shutil.copy(JETSON / "xraysr.service", tmp_path / "xraysr.service")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "xraysr.service")], capture_output=True, text=True, timeout=30
    )
    # This machine has neither Docker nor its unit; those two complaints are about the machine, not the file.
    machine = ("Unit docker.service not found", "Command /usr/bin/docker is not executable")
    problems = [line for line in (result.stdout + result.stderr).splitlines() if not any(m in line for m in machine)]
    assert problems == []


def test_the_example_environment_file_names_real_settings() -> None:
    settings = {f"XRAYSR_{name.upper()}" for name in Settings.model_fields}
    for line in (JETSON / "xraysr.env.example").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        assert value and value[0] not in "'\"" and not key.startswith("export"), line  # docker --env-file syntax
        assert key in settings | {"XRAYSR_IMAGE", "XRAYSR_PUBLISH"}, key


def test_the_example_publishes_on_loopback_or_needs_a_token(tmp_path: Path) -> None:
    """Unauthenticated only while the container is published on the host's loopback; the container itself
    (host 0.0.0.0) starts only with a token or that explicit opt-out."""
    values = dict(
        line.split("=", 1)
        for line in (JETSON / "xraysr.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    unauthenticated = values.get("XRAYSR_ALLOW_UNAUTHENTICATED") == "1" and "XRAYSR_API_KEY" not in values
    assert not unauthenticated or values["XRAYSR_PUBLISH"].startswith("127.0.0.1:")
    (tmp_path / "cxr-default").mkdir()
    (tmp_path / "cxr-default" / "manifest.json").write_text("{}")
    settings = {"host": "0.0.0.0", "engines_dir": tmp_path}
    with pytest.raises(ValidationError, match="set XRAYSR_API_KEY"):
        Settings(**settings)
    assert Settings(**settings, allow_unauthenticated=True).host == "0.0.0.0"
