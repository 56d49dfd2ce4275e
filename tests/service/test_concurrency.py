"""service/concurrency.py: capacity is running batches' places plus the queue; the rest are refused at once."""

from __future__ import annotations

import pytest

from xraysr.service.concurrency import Admission, Overloaded


def test_admits_up_to_its_capacity_and_refuses_the_next() -> None:
    admission = Admission(max_concurrent=1, max_queued=2, max_batch=3)
    assert admission.capacity == 5
    with admission.admit(), admission.admit(), admission.admit(), admission.admit(), admission.admit():
        assert admission.admitted == 5
        refusal = r"5 upscale\(s\) admitted.*1 batch\(es\) of up to 3 plus 2 queued"
        with pytest.raises(Overloaded, match=refusal), admission.admit():
            pass
        assert admission.admitted == 5
    assert admission.admitted == 0


def test_a_failing_request_frees_its_place() -> None:
    admission = Admission(max_concurrent=1, max_queued=0)
    with pytest.raises(RuntimeError, match="boom"), admission.admit():
        raise RuntimeError("boom")
    with admission.admit():
        assert admission.admitted == 1


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_concurrent, max_batch and max_decoding >= 1"):
        Admission(0, 0)
    with pytest.raises(ValueError, match="max_queued >= 0"):
        Admission(1, -1)
