"""docker/: the Dockerfiles' structure (parsed here; no Docker engine needed), the entrypoint's behaviour
against a fake `xraysr`, the health check's one-liner against a local server, and shellcheck."""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import shlex
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_packaging import package_dirs
from xraysr.service.settings import PACKAGED_ENGINES_DIR

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = {"jetson": DOCKER / "Dockerfile.jetson", "cpu": DOCKER / "Dockerfile.cpu"}
ENTRYPOINT = DOCKER / "entrypoint.sh"
CACHE_VOLUME = "/var/lib/xraysr/engines-cache"
EX_CONFIG = 78  # sysexits.h: the entrypoint's "cannot work as started"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined; comments and blank lines dropped, as Docker does
    (a comment line inside a continuation is skipped too)."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        keyword, _, arguments = " ".join([*pending, stripped]).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = []
    if pending:
        raise ValueError(f"the file ends inside the continuation that starts on line {start}")
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions per build stage, each starting at its FROM."""
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def build_args(instructions: list[Instruction]) -> dict[str, str]:
    """The defaults of the ARGs declared before the first FROM (the ones FROM may use)."""
    defaults = {}
    for instruction in instructions:
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, default = instruction.arguments.partition("=")
            defaults[name] = default
    return defaults


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(instruction.arguments))  # type: ignore[misc]
    return env


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, list[Instruction]]:
    return request.param, parse_dockerfile(DOCKERFILES[request.param].read_text())


def test_the_parser_joins_continuations_and_drops_comments() -> None:
    text = "# a comment\nFROM a:1 AS b\n\nRUN one \\\n    # inside\n    two\nUSER x\n"
    assert parse_dockerfile(text) == [
        Instruction("FROM", "a:1 AS b", 2),
        Instruction("RUN", "one two", 4),
        Instruction("USER", "x", 7),
    ]
    with pytest.raises(ValueError, match="ends inside the continuation"):
        parse_dockerfile("RUN a \\\n")


def test_every_base_image_is_pinned(dockerfile: tuple[str, list[Instruction]]) -> None:
    _, instructions = dockerfile
    args = build_args(instructions)
    stage_names: set[str] = set()
    for instruction in instructions:
        if instruction.keyword != "FROM":
            continue
        words = instruction.arguments.split()
        image = words[0]
        for name, default in args.items():
            image = image.replace(f"${{{name}}}", default).replace(f"${name}", default)
        if image not in stage_names:
            repository, _, tag = image.rpartition(":")
            assert repository and "/" not in tag and tag not in ("", "latest"), f"line {instruction.line}: {image}"
        if len(words) == 3 and words[1].upper() == "AS":
            stage_names.add(words[2])


def test_the_served_stage_runs_as_a_user_with_a_health_check(dockerfile: tuple[str, list[Instruction]]) -> None:
    _, instructions = dockerfile
    final = stages(instructions)[-1]
    keywords = [instruction.keyword for instruction in final]
    assert keywords[-1] == "ENTRYPOINT"
    users = [instruction.arguments for instruction in final if instruction.keyword == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    # The user is created by a RUN before it is switched to, and nothing runs as root after the switch.
    assert "useradd --uid 1000" in " ".join(i.arguments for i in final if i.keyword == "RUN")
    assert "RUN" not in keywords[keywords.index("USER") :]
    (healthcheck,) = [instruction.arguments for instruction in final if instruction.keyword == "HEALTHCHECK"]
    assert "/readyz" in healthcheck and "--start-period=" in healthcheck
    assert [i.arguments for i in final if i.keyword == "EXPOSE"] == ["8000"]
    (entrypoint,) = [instruction.arguments for instruction in final if instruction.keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["/usr/local/bin/xraysr-entrypoint"]
    copies = [i.arguments.split() for i in final if i.keyword == "COPY"]
    assert ["docker/entrypoint.sh", "/usr/local/bin/xraysr-entrypoint"] in copies
    # Every folder pyproject.toml maps into the package is in the build source, the model (xraysr/engines) among
    # them, and it is not copied again beside it.
    for source in package_dirs().values():
        top = source.split("/")[0]
        assert [top, f"./{top}"] in copies, source
    assert not [copy for copy in copies if copy[-1].startswith("/opt/xraysr/engines")]


def test_the_settings_suit_the_backend(dockerfile: tuple[str, list[Instruction]]) -> None:
    name, instructions = dockerfile
    env = env_of(stages(instructions)[-1])
    assert env["XRAYSR_HOST"] == "0.0.0.0" and env["XRAYSR_PORT"] == "8000"
    # No XRAYSR_ENGINES_DIR: serve's default is the model the installed package carries.
    assert "XRAYSR_ENGINES_DIR" not in env
    assert (PACKAGED_ENGINES_DIR / env["XRAYSR_MODEL"] / "manifest.json").is_file()
    if name == "jetson":
        assert (env["XRAYSR_BACKEND"], env["XRAYSR_PRECISION"]) == ("tensorrt", "int8")
        # The folder the TensorRT runtime caches engines in is the volume.
        assert env["XRAYSR_TRT_CACHE_DIR"] == CACHE_VOLUME
        # The image's TensorRT promise, for xraysr-gpu-check; the build argument fills it.
        assert env["XRAYSR_EXPECTED_TENSORRT"] == "${EXPECTED_TENSORRT}"
    else:
        # auto: INT8 on a host CPU with VNNI or AMX, FP32 elsewhere (service/cpu_features.py).
        assert (env["XRAYSR_BACKEND"], env["XRAYSR_PRECISION"]) == ("onnxruntime", "auto")


def test_the_jetson_image_builds_pycuda_and_takes_tensorrt_from_jetpack() -> None:
    instructions = parse_dockerfile(DOCKERFILES["jetson"].read_text())
    builder, served = stages(instructions)
    # JetPack 6.1/6.2's userspace: TensorRT 10.3, CUDA 12.6 (r36.3.0 is JetPack 6.0, TensorRT 8.6).
    assert build_args(instructions)["L4T_JETPACK_IMAGE"] == "nvcr.io/nvidia/l4t-jetpack:r36.4.0"
    assert build_args(instructions)["EXPECTED_TENSORRT"] == "10.3"
    assert {"L4T_JETPACK_IMAGE", "EXPECTED_TENSORRT"} <= {i.arguments for i in builder if i.keyword == "ARG"}
    assert "EXPECTED_TENSORRT" in [i.arguments for i in served if i.keyword == "ARG"]
    builder_runs = " ".join(i.arguments for i in builder if i.keyword == "RUN")
    assert "python3-dev" in builder_runs and "build-essential" in builder_runs
    assert 'pip wheel --no-cache-dir --no-deps --wheel-dir /wheels "pycuda==${PYCUDA_VERSION}"' in builder_runs
    assert "LIBRARY_PATH=/usr/local/cuda/lib64/stubs" in builder_runs
    for stage in (builder, served):
        assert env_of(stage)["CUDA_ROOT"] == "/usr/local/cuda"
        assert env_of(stage)["PATH"].startswith("/usr/local/cuda/bin:")
    served_runs = " ".join(i.arguments for i in served if i.keyword == "RUN")
    assert "/tmp/wheels/pycuda-*.whl" in served_runs and "build-essential" not in served_runs
    for instruction in instructions:
        if instruction.keyword == "RUN" and "pip" in instruction.arguments:
            words = set(shlex.split(instruction.arguments.replace("&&", " ")))
            assert not words & {"torch", "tensorrt", "nvidia-tensorrt", "onnxruntime-gpu"}, instruction
    # The cache folder exists and belongs to the user before VOLUME, so a new named volume inherits both.
    keywords = [i.keyword for i in served]
    volume = keywords.index("VOLUME")
    assert json.loads(served[volume].arguments) == [CACHE_VOLUME]
    assert any(f"chown xraysr:xraysr {CACHE_VOLUME}" in i.arguments for i in served[:volume] if i.keyword == "RUN")
    assert "--groups video" in " ".join(i.arguments for i in served if i.keyword == "RUN")


def _tensorrt_check(instructions: list[Instruction]) -> str:
    """The builder stage's first RUN: the one that compares the base image's TensorRT with the promise."""
    builder = stages(instructions)[0]
    runs = [instruction for instruction in builder if instruction.keyword == "RUN"]
    assert "EXPECTED_TENSORRT" in runs[0].arguments, "the TensorRT check must run first, before anything slow"
    assert builder.index(runs[0]) < min(builder.index(run) for run in runs if "pycuda" in run.arguments)
    return runs[0].arguments


@pytest.mark.parametrize(
    ("python_says", "dpkg_says", "expected", "passes"),
    [
        ("10.3.0", None, "10.3", True),
        ("8.6.2", None, "10.3", False),  # the r36.3.0 base under the default promise
        ("8.6.2", None, "8.6", True),  # ... built as documented, with both arguments overridden
        ("10.30.1", None, "10.3", False),  # a prefix is not a match
        (None, "10.3.0.30-1+cuda12.5", "10.3", True),  # no importable bindings: the Debian package says it
        (None, None, "10.3", False),  # no TensorRT at all
    ],
)
def test_the_jetson_build_stops_at_once_on_a_tensorrt_it_does_not_promise(
    tmp_path: Path, python_says: str | None, dpkg_says: str | None, expected: str, passes: bool
) -> None:
    """The RUN line itself, under /bin/sh as Docker runs it, with python3 and dpkg-query stand-ins."""
    command = _tensorrt_check(parse_dockerfile(DOCKERFILES["jetson"].read_text()))
    for tool, answer in (("python3", python_says), ("dpkg-query", dpkg_says)):
        script = tmp_path / tool
        script.write_text(f"#!/bin/sh\necho '{answer}'\n" if answer else "#!/bin/sh\nexit 1\n")
        script.chmod(0o755)
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "EXPECTED_TENSORRT": expected,
        "L4T_JETPACK_IMAGE": "nvcr.io/nvidia/l4t-jetpack:r36.x",
    }
    result = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=10)
    found = python_says or (dpkg_says or "none")
    if passes:
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"TensorRT {found} in nvcr.io/nvidia/l4t-jetpack:r36.x, as expected ({expected})\n"
    else:
        assert result.returncode == 1
        assert result.stderr.startswith(
            f"error: nvcr.io/nvidia/l4t-jetpack:r36.x has TensorRT '{found}', not {expected}: pass"
        )


def test_the_cpu_image_is_python_slim() -> None:
    instructions = parse_dockerfile(DOCKERFILES["cpu"].read_text())
    (from_line,) = [i.arguments for i in instructions if i.keyword == "FROM"]
    assert from_line.startswith("python:3.11.") and from_line.endswith("-slim-bookworm")


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: a pattern matching the path or a folder above it excludes it, a "!" pattern brings it
    back, and the last pattern that matches decides."""
    parts = Path(path.rstrip("/")).parts
    prefixes = ["/".join(parts[: length + 1]) for length in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if any(fnmatch.fnmatch(prefix, pattern.lstrip("!").rstrip("/")) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_the_ignore_rule_follows_dockers_exceptions() -> None:
    patterns = ["jetson", "!jetson/gpu_check.sh", "**/*.pyc"]
    assert _ignored("jetson/build_engines.sh", patterns) and _ignored("jetson", patterns)
    assert not _ignored("jetson/gpu_check.sh", patterns) and not _ignored("service/app.py", patterns)


def test_what_the_images_copy_exists_and_is_not_docker_ignored(dockerfile: tuple[str, list[Instruction]]) -> None:
    _, instructions = dockerfile
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in ("", "#")
    ]
    for excluded in (".venv", "runs", ".git", "tests", ".pytest_cache"):
        assert _ignored(excluded, patterns), excluded
    for instruction in instructions:
        if instruction.keyword != "COPY" or instruction.arguments.startswith("--from="):
            continue
        *sources, _destination = instruction.arguments.split()
        for source in sources:
            assert (REPO / source).exists(), f"line {instruction.line}: {source}"
            assert not _ignored(source, patterns), f"line {instruction.line}: {source} is in .dockerignore"
    assert (REPO / "README.md").exists()  # pyproject.toml names it as the package's readme


class _Probe(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def probe_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Probe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_cpu_health_check_fails_until_ready(probe_server: http.server.HTTPServer) -> None:
    instructions = parse_dockerfile(DOCKERFILES["cpu"].read_text())
    (healthcheck,) = [i.arguments for i in instructions if i.keyword == "HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])
    assert command[:2] == ["python3", "-c"]
    env = {**os.environ, "XRAYSR_PORT": str(probe_server.server_address[1])}
    for status, returncode in ((200, 0), (503, 1)):
        _Probe.status = status
        assert subprocess.run(["python3", "-c", command[2]], env=env, capture_output=True).returncode == returncode


# --- the entrypoint -----------------------------------------------------------------------------------------


def test_the_entrypoint_is_an_executable_strict_bash_script_that_execs_serve() -> None:
    assert os.access(ENTRYPOINT, os.X_OK)
    text = ENTRYPOINT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    assert text.rstrip().splitlines()[-1] == 'exec xraysr serve "$@"'
    subprocess.run(["bash", "-n", str(ENTRYPOINT)], check=True)


def _fake_xraysr(folder: Path) -> Path:
    """An `xraysr` that logs each call."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "calls"
    script = folder / "xraysr"
    script.write_text(
        f'#!/bin/sh\necho "$*" >> "{log}"\n'
    )
    script.chmod(0o755)
    return log


def _run_entrypoint(bin_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env}
    return subprocess.run(["bash", str(ENTRYPOINT), *args], env=environ, capture_output=True, text=True, timeout=10)


def test_on_onnxruntime_the_entrypoint_only_serves(tmp_path: Path) -> None:
    log = _fake_xraysr(tmp_path / "bin")
    result = _run_entrypoint(tmp_path / "bin", "--port", "9000", XRAYSR_BACKEND="onnxruntime")
    assert result.returncode == 0, result.stderr
    assert log.read_text() == "serve --port 9000\n"


def test_on_tensorrt_the_entrypoint_leaves_the_build_to_serve(tmp_path: Path) -> None:
    # serve builds the engines in its background load, so /readyz answers 503 "loading" during the build
    # (tests/service/test_trt_runtime.py) instead of the port refusing connections for minutes.
    log = _fake_xraysr(tmp_path / "bin")
    cache = tmp_path / "cache"
    cache.mkdir()
    result = _run_entrypoint(
        tmp_path / "bin", "--port", "9000", XRAYSR_BACKEND="tensorrt", XRAYSR_TRT_CACHE_DIR=str(cache)
    )
    assert result.returncode == 0, result.stderr
    assert log.read_text() == "serve --port 9000\n"
    assert f"in {cache}: built by serve on the first start" in result.stderr


def test_an_unwritable_cache_fails_for_good(tmp_path: Path) -> None:
    log = _fake_xraysr(tmp_path / "bin")
    cache = tmp_path / "not-mounted"  # absent: not writable even by root, who may write anywhere else
    result = _run_entrypoint(tmp_path / "bin", XRAYSR_BACKEND="tensorrt", XRAYSR_TRT_CACHE_DIR=str(cache))
    assert result.returncode == EX_CONFIG
    assert f"the engine cache {cache} is not writable by uid {os.getuid()}" in result.stderr
    assert not log.exists()  # serve never started


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_a_docker_that_blocks_threads_is_named_in_one_line(tmp_path: Path, backend: str) -> None:
    """Docker < 20.10.10's seccomp answers clone3 with EPERM: Python's first thread fails as below."""
    log = _fake_xraysr(tmp_path / "bin")
    python3 = tmp_path / "bin" / "python3"
    python3.write_text('#!/bin/sh\necho "RuntimeError: can\'t start new thread" >&2\nexit 1\n')
    python3.chmod(0o755)
    result = _run_entrypoint(tmp_path / "bin", XRAYSR_BACKEND=backend, XRAYSR_TRT_CACHE_DIR=str(tmp_path))
    assert result.returncode == EX_CONFIG
    assert result.stderr.splitlines() == [
        "xraysr-entrypoint: error: this container cannot start a thread: Docker older than 20.10.10 blocks glibc's "
        "clone3 (moby/moby#42680); upgrade Docker on the host (docker version: Server 20.10.10 or later)"
    ]
    assert not log.exists()


SHELL_SCRIPTS = [ENTRYPOINT, *sorted((REPO / "jetson").glob("*.sh"))]


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda path: path.name)
def test_shellcheck_is_clean(script: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
