"""The tests of training and export use the tiny model as trained and exported by this checkout's code, with its
checkpoint beside it, instead of the checked-in copy the service's tests use."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_engine_dir(tiny_trained: dict[str, Path]) -> Path:
    return tiny_trained["tiny"]


@pytest.fixture(scope="session")
def tiny_step_engine_dir(tiny_trained: dict[str, Path]) -> Path:
    return tiny_trained["tiny-step"]
