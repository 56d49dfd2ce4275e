"""The suite's rule on skips (tests/conftest.py): only a reason on the allowed list may skip a test."""

from __future__ import annotations

import pytest

from tests.conftest import unexplained_skip


@pytest.mark.parametrize(
    "reason",
    [
        "needs ../shared/data: the CXR set (not found at /x/shared/data/cxr)",
        "exporting a model needs the train extra",
        "TensorRT and pycuda are not installed (they need a GPU driver and NVIDIA's index)",
        "shellcheck is not installed (apt-get install shellcheck)",
    ],
)
def test_a_missing_tool_or_the_real_data_may_skip(reason: str) -> None:
    assert not unexplained_skip(reason)


@pytest.mark.parametrize(
    "reason",
    [
        "shared CXR development set not found at /x/shared/data/cxr",  # the old wording: says nothing of why
        "flaky on this machine",
        "unconditional skip",
        "needs the shared data",
    ],
)
def test_any_other_reason_fails_the_suite(reason: str) -> None:
    assert unexplained_skip(reason)
