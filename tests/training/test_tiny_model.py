"""The checked-in tiny model (tests/data/models, used by the service's tests) is what this checkout's training and
export make: when the export or the manifest changes, this fails until `python -m tests.tiny_model` is run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests import tiny_model


def _comparable(value: Any) -> Any:
    """A manifest without what differs between two exports of the same thing: checksums, and float digits past
    the fourth (training on another CPU rounds differently)."""
    if isinstance(value, dict):
        return {key: None if key == "sha256" else _comparable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_comparable(item) for item in value]
    if isinstance(value, float):
        return float(f"{value:.4g}")
    return value


@pytest.mark.parametrize("kind", sorted(tiny_model.EXPORTS))
def test_the_checked_in_tiny_model_is_what_the_code_exports(tiny_trained: dict[str, Path], kind: str) -> None:
    made, checked_in = tiny_trained[kind], tiny_model.checked_in(kind)
    assert sorted(path.name for path in made.iterdir()) == sorted(path.name for path in checked_in.iterdir())
    fresh = json.loads((made / "manifest.json").read_text())
    shipped = json.loads((checked_in / "manifest.json").read_text())
    assert _comparable(shipped) == _comparable(fresh), "run `python -m tests.tiny_model` and commit tests/data/models"
