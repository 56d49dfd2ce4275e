"""service/extras.py: each command run without its optional dependency ends with one line naming what to install,
before it does any work.

The commands run in a subprocess where the dependency is made unimportable the way Python documents it
(``sys.modules[name] = None`` makes ``import name`` raise ImportError), which is what a base install looks like
to the command.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from xraysr.service.cli import build_parser
from xraysr.service.extras import DISTRIBUTION, SCORING, TRAINING, is_installed, needs_of

REPO = Path(__file__).resolve().parents[2]
RAW_NIH = Path(__file__).resolve().parents[3] / "shared" / "data" / "nih_sample"


def run_without(blocked: tuple[str, ...], argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    program = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None\n"
        "from xraysr.service.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", program], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


# (command line, what is made unimportable, what the one line must name, a path the command would create)
CASES = [
    (["prepare", "--images", str(RAW_NIH), "--out", "{out}"], ("cv2",), "xraysr[train]", "{out}"),
    (["train-vae", "--config", str(REPO / "configs" / "vae_all.yaml")], ("torch",), "xraysr[train]", None),
    (["train", "--config", str(REPO / "configs" / "sr_all.yaml")], ("torch",), "xraysr[train]", None),
    (["evaluate", "--checkpoint", "missing.pt", "--out", "{out}"], ("diffusers",), "xraysr[train]", "{out}"),
    (["export", "--checkpoint", "missing.pt", "--out", "{out}"], ("onnx",), "xraysr[train]", "{out}"),
    (["quantize", "--model-dir", str(REPO / "engines" / "cxr-default"), "--calib", "data", "--out", "{out}"],
     ("onnx",), "xraysr[train]", "{out}"),  # fmt: skip
    (["evaluate-served", "--data", "data", "--out", "{out}"], ("httpx",), "xraysr[train]", "{out}"),
    (["bench", "--runs", "1", "--write", "{out}"], ("httpx",), "xraysr[bench]", "{out}"),
    (["bench", "--no-http", "--flops", "--runs", "1", "--write", "{out}"], ("onnx",), "xraysr[train]", "{out}"),
    (["serve", "--backend", "tensorrt", "--port", "1"], ("tensorrt", "pycuda"), "pycuda", None),
    (["upscale", "in.png", "-o", "{out}", "--backend", "tensorrt"], ("pycuda",), "pycuda", "{out}"),
    (["build-engines", "--precision", "fp16", "--trt-cache-dir", "{out}"], ("tensorrt",), "TensorRT", "{out}"),
]


@pytest.mark.parametrize(("argv", "blocked", "names", "creates"), CASES, ids=lambda value: str(value)[:40])
def test_a_missing_dependency_is_one_line_before_any_work(
    tmp_path: Path, argv: list[str], blocked: tuple[str, ...], names: str, creates: str | None
) -> None:
    out = tmp_path / "out"
    argv = [part.replace("{out}", str(out)) for part in argv]
    result = run_without(blocked, argv, tmp_path)

    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"xraysr {argv[0]}: error: this command needs ")
    assert names in lines[0]
    assert any(DISTRIBUTION.get(module, module) in lines[0] for module in blocked)
    assert result.stdout == ""
    if creates is not None:
        assert not out.exists(), "the command did work before saying what it needs"


def test_the_same_command_with_its_dependency_gets_past_the_check(tmp_path: Path) -> None:
    # The control for the cases above: with httpx importable, bench's check passes and the command runs (here
    # into a bad flag value that only the command itself rejects).
    result = run_without((), ["bench", "--samples", "99", "--runs", "1"], tmp_path)
    assert result.returncode == 2
    assert "needs" not in result.stderr
    assert "samples" in result.stderr


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_bench_needs_follow_its_flags() -> None:
    assert needs_of(parse("bench", "--no-http")) == []
    assert [need.modules for need in needs_of(parse("bench"))] == [("httpx",)]
    assert [need.modules for need in needs_of(parse("bench", "--no-http", "--flops"))] == [("onnx",)]
    assert [need.modules for need in needs_of(parse("bench", "--no-http", "--checkpoint", "a.pt"))] == [TRAINING]


def test_the_backend_comes_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XRAYSR_BACKEND", raising=False)
    assert needs_of(parse("serve")) == []
    monkeypatch.setenv("XRAYSR_BACKEND", "tensorrt")
    assert [need.modules for need in needs_of(parse("serve"))] == [("tensorrt", "pycuda")]
    assert needs_of(parse("serve", "--backend", "onnxruntime")) == []


def test_every_module_named_is_one_the_dev_install_has() -> None:
    # A misspelt import name ("sklearn" for skimage) would make every command refuse to run.
    for module in {*TRAINING, *SCORING, "onnx", "httpx"}:
        assert is_installed(module), module


def test_a_module_marked_absent_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_installed("json")
    monkeypatch.setitem(sys.modules, "json", None)
    assert not is_installed("json")
    assert not is_installed("no_such_module_xraysr")
