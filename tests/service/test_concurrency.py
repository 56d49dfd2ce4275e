"""service/concurrency.py: N run, M wait, the rest are refused at once."""

from __future__ import annotations

import threading

import anyio
import pytest

from service.concurrency import Admission, Overloaded


def test_runs_at_most_n_queues_m_and_refuses_the_rest() -> None:
    admission = Admission(max_concurrent=1, max_queued=1)
    release = threading.Event()
    running, peak, outcomes = 0, 0, []
    lock = threading.Lock()

    def work() -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(5)
        with lock:
            running -= 1
        return "done"

    async def attempt() -> None:
        try:
            outcomes.append(await admission.run(work))
        except Overloaded as error:
            outcomes.append(str(error))

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            for _ in range(3):
                tasks.start_soon(attempt)
                await anyio.sleep(0.05)
            assert admission.admitted == 2  # one running, one waiting; the third was refused
            release.set()

    anyio.run(main)
    assert outcomes[0] == "the server is busy: 1 upscale(s) running and 1 queued; retry shortly"
    assert outcomes[1:] == ["done", "done"]
    assert peak == 1 and admission.admitted == 0


def test_a_failing_job_frees_its_place() -> None:
    admission = Admission(max_concurrent=1, max_queued=0)

    def fail() -> None:
        raise RuntimeError("boom")

    async def main() -> str:
        with pytest.raises(RuntimeError, match="boom"):
            await admission.run(fail)
        return await admission.run(lambda: "still serving")

    assert anyio.run(main) == "still serving"


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_concurrent >= 1"):
        Admission(0, 0)
