"""Renamed command-line flags keep their old spelling for one version, with a warning (service/renamed_flags.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from xraysr.service.cli import build_parser
from xraysr.service.renamed_flags import add_renamed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xraysr quantize")
    add_renamed(parser, "--model-dir", "--engines", required=True, type=Path, help="the model folder")
    return parser


def test_the_new_name_is_quiet_and_the_old_one_warns(capsys: pytest.CaptureFixture[str]) -> None:
    assert _parser().parse_args(["--model-dir", "m"]).model_dir == Path("m")
    assert capsys.readouterr().err == ""
    assert _parser().parse_args(["--engines", "m"]).model_dir == Path("m")
    assert capsys.readouterr().err == "xraysr: --engines is renamed --model-dir; the old name goes in 0.4\n"


def test_one_of_the_two_is_required_never_both(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args([])
    assert "--model-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parser().parse_args(["--model-dir", "a", "--engines", "b"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert "--engines" not in _parser().format_help()


@pytest.mark.parametrize(
    ("argv", "dest", "value"),
    [
        (["build-engines", "--precision", "fp16", "--cache-dir", "c"], "trt_cache_dir", Path("c")),
        (["quantize", "--engines", "m", "--calib", "d"], "model_dir", Path("m")),
        (["calibrate-interval", "--engines", "m", "--data", "d"], "model_dir", Path("m")),
        (["import-engines", "--engines", "m", "--out", "o"], "model_dir", Path("m")),
    ],
)
def test_every_renamed_flag_of_the_cli_still_parses(
    argv: list[str], dest: str, value: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert getattr(build_parser().parse_args(argv), dest) == value
    assert "is renamed" in capsys.readouterr().err
