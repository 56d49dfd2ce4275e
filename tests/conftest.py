"""Fixtures shared by the whole suite: where the real shared data lives, a small data root of the suite's own
X-rays (tests/xrays.py), and a tiny real model trained and exported on it."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest

from tests import tiny_model, xrays

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# The reasons a test may skip. A skip is a test that did not run, so the suite fails on any other reason: a skip
# must name what this machine lacks, and tests of the code carry their own model and X-rays (tests/xrays.py).
ALLOWED_SKIPS = (
    r"^needs \.\./shared/data: ",  # a test about the real data, which a clone of the repository does not have
    r"train extra",  # torch, diffusers, OpenCV, onnx, scipy: `pip install 'xraysr[train]'`
    r"needs pydicom",
    r"TensorRT",  # TensorRT and pycuda come from JetPack on a GPU machine, never from pip
    r"nvidia-smi",
    r"is not installed",  # a system tool: shellcheck, dciodvfy, systemd-analyze
    r"needs Debian's chromium|drives Chromium with selenium",
    r"Intel IPP",
    r"without root",
    r"decoder plugin is installed",
)


def unexplained_skip(reason: str) -> bool:
    return not any(re.search(pattern, reason) for pattern in ALLOWED_SKIPS)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        if unexplained_skip(reason):
            UNEXPLAINED.append(f"{report.nodeid}: {reason}")


UNEXPLAINED: list[str] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if UNEXPLAINED and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if UNEXPLAINED:
        terminalreporter.section("skips whose reason is not allowed (tests/conftest.py ALLOWED_SKIPS)", red=True)
        for line in UNEXPLAINED:
            terminalreporter.line(line)


def build_cxr_root(root: Path, splits: list[str]) -> Path:
    """A prepared-data folder (as `xraysr prepare` writes one) whose images are links to the first len(splits) of
    the suite's own X-ray pairs."""
    names = xrays.pair_names()[: len(splits)]
    assert len(names) == len(splits), f"tests/data/xrays has {xrays.PAIRS} pairs; {len(splits)} asked for"
    for folder in ("HR_256", "LR_64"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / folder / name).symlink_to(xrays.XRAYS / folder / name)
    with (root / "splits.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "patient_id", "view", "split"])
        for index, (name, split) in enumerate(zip(names, splits, strict=False)):
            writer.writerow([name, f"patient{index}", "PA", split])
    return root


@pytest.fixture(scope="session")
def tiny_cxr_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 train, 2 val, 2 test pairs of the suite's synthetic chest X-rays."""
    return build_cxr_root(tmp_path_factory.mktemp("tiny_cxr"), ["train"] * 4 + ["val"] * 2 + ["test"] * 2)


def _copy_of(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of a checked-in tiny model (tests/tiny_model.py), so a test may write beside it (engine caches)."""
    engine = tmp_path_factory.mktemp(kind) / tiny_model.ENGINE
    shutil.copytree(tiny_model.checked_in(kind), engine)
    return engine


@pytest.fixture(scope="session")
def tiny_engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real engines/<model> folder (encoder, unet, decoder): the suite's tiny model, without the step graph, as a
    host-loop runtime needs it and older exports look. Its images are meaningless; every file is the real thing.
    tests/training overrides it with the same model exported now."""
    return _copy_of("tiny", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_step_engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights exported with export's defaults, which add the unet_step component (UNet + DDIM update)."""
    return _copy_of("tiny-step", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_trained(tiny_cxr_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model trained for 2 steps and exported now, both ways (tests/tiny_model.py): for the tests of
    training and export, which need the checkpoint beside its engines."""
    pytest.importorskip("torch", reason="training and exporting a model needs the train extra")
    return tiny_model.build(tmp_path_factory.mktemp("tiny_trained"), tiny_cxr_root)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_trained: dict[str, Path]) -> Path:
    return tiny_trained["checkpoint"]
