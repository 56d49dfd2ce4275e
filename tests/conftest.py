"""Fixtures shared by the whole suite: where the real shared data lives, a small data root of the suite's own
X-rays (tests/xrays.py), and a tiny real model trained and exported on it."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from tests import xrays

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


@pytest.fixture(scope="session")
def tiny_engine_dir(tiny_cxr_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real engines/<model> folder exported from a tiny SR model trained for 2 steps on the suite's X-rays.

    Its images are meaningless, but every ONNX file, checksum and manifest field is the real thing.
    """
    torch = pytest.importorskip("torch", reason="exporting a model needs the train extra")
    from xraysr.training.config import SRTrainConfig
    from xraysr.training.export import export_model
    from xraysr.training.train import train_sr
    from xraysr.training.vae import CxrVAE

    work = tmp_path_factory.mktemp("tiny_engine")
    torch.save(CxrVAE(hidden_channels=8, num_res_blocks=1).state_dict(), work / "vae.pt")
    config = SRTrainConfig.model_validate(
        {
            "run_name": "tiny",
            "output_dir": str(work / "runs"),
            "data": {"root": str(tiny_cxr_root)},
            "vae": {"kind": "cxr", "hidden_channels": 8, "num_res_blocks": 1, "checkpoint": str(work / "vae.pt")},
            "unet": {"base_channels": 8, "channel_multipliers": [1, 2], "time_embed_dim": 16},
            "diffusion": {"prediction_type": "v_prediction", "sample_steps": 2},
            "optim": {"batch_size": 2, "max_steps": 2, "warmup_steps": 1},
            "schedule": {"validation_images": 1},
        }
    )
    checkpoint = train_sr(config, resume=None)
    # Without the step graph: the model a host-loop runtime needs, and what older exports look like.
    export_model(checkpoint, work / "engine", "tiny", version="tiny-test", steps=(2, 4, 50), step_graph=False)
    return work / "engine"


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_engine_dir: Path) -> Path:
    return tiny_engine_dir.parent / "runs" / "tiny" / "checkpoints" / "step_0000002.pt"


@pytest.fixture(scope="session")
def tiny_step_engine_dir(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model exported again with export's defaults, which add the unet_step component (UNet + DDIM update)."""
    from xraysr.training.export import export_model

    engine = tmp_path_factory.mktemp("tiny_step_engine") / "engine"
    export_model(tiny_checkpoint, engine, "tiny", version="tiny-test", steps=(2, 4, 50))
    return engine
