"""service/batching.py and admission on a real server: identical answers batched or not, abandoned work dropped,
overload answered cheaply, decompression bombs refused without the memory."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.service.dicom_files import deflate_bomb
from tests.service.serving import DEFAULT_ENGINES, memory_mb, metric
from xraysr.service.engine import load_pipeline
from xraysr.service.pipeline import Stopped
from xraysr.service.settings import Settings
from xraysr.service.tools.local_server import local_server_process

PNG = {"content-type": "image/png"}


def test_the_pipeline_stops_between_steps_when_asked(engine_settings: Settings) -> None:
    pipeline = load_pipeline(engine_settings, warm_up=False)
    image = np.zeros((64, 64), np.uint8)
    asked = []

    def stop_at_the_second_step() -> bool:
        asked.append(True)
        return len(asked) > 1

    with pytest.raises(Stopped, match="nobody is waiting"):
        pipeline.upscale_batch([(image, [1])], steps=4, should_stop=stop_at_the_second_step)
    assert len(asked) == 2


def test_batched_answers_are_byte_identical_to_unbatched(
    tiny_engine_dir: Path, lr_png_paths: list[Path], tmp_path: Path
) -> None:
    env = {"XRAYSR_MAX_BATCH": "8", "XRAYSR_MAX_BATCH_DELAY_MS": "500", "XRAYSR_MAX_QUEUED_REQUESTS": "16"}
    bodies = [path.read_bytes() for path in lr_png_paths]
    # 1+2+1+3+1 = 8 samples at 4 steps (one batch), and one at 2 steps (its own batch).
    requests = [(0, 4, 1, 11), (1, 4, 2, 12), (2, 4, 1, 13), (0, 4, 3, 14), (1, 4, 1, 15), (2, 2, 1, 16)]
    with local_server_process(tiny_engine_dir.parent, tiny_engine_dir.name, env=env, log=tmp_path / "log") as (
        url,
        _,
    ):

        def post(request: tuple[int, int, int, int]) -> httpx.Response:
            body, steps, samples, seed = request
            params = {"steps": steps, "samples": samples, "seed": seed}
            return httpx.post(f"{url}/upscale", params=params, content=bodies[body], headers=PNG, timeout=30)

        with ThreadPoolExecutor(len(requests)) as pool:
            together = list(pool.map(post, requests))
        alone = [post(request) for request in requests]
        assert all(response.status_code == 200 for response in together + alone)
        assert [response.headers["x-batch-samples"] for response in together] == ["8"] * 5 + ["1"]
        assert [response.headers["x-batch-samples"] for response in alone] == [str(r[2]) for r in requests]
        for batched, single in zip(together, alone, strict=True):
            assert batched.content == single.content
        assert metric(url, "xraysr_batch_requests_count") == 2 + len(requests)
        assert metric(url, "xraysr_batch_requests_bucket", 'le="4.0"') == len(requests) + 1  # all but the 5
        assert metric(url, "xraysr_batch_samples_sum") == 2 * (8 + 1)


def test_estimates_batch_together_apart_from_the_loop_and_answer_as_they_would_alone(
    tiny_engine_dir: Path, lr_png_paths: list[Path], tmp_path: Path
) -> None:
    env = {"XRAYSR_MAX_BATCH": "8", "XRAYSR_MAX_BATCH_DELAY_MS": "500", "XRAYSR_MAX_QUEUED_REQUESTS": "16"}
    bodies = [path.read_bytes() for path in lr_png_paths]
    # Four estimates (one row each, seeds that must not matter) and one 1-sample loop at the default steps.
    requests: list[tuple[int, dict[str, int]]] = [
        (0, {"seed": 1}), (1, {}), (2, {"seed": 7}), (0, {"seed": 8}), (1, {"seed": 3, "samples": 1})
    ]
    with local_server_process(tiny_engine_dir.parent, tiny_engine_dir.name, env=env, log=tmp_path / "log") as (
        url,
        _,
    ):

        def post(request: tuple[int, dict[str, int]]) -> httpx.Response:
            body, params = request
            return httpx.post(f"{url}/upscale", params=params, content=bodies[body], headers=PNG, timeout=30)

        with ThreadPoolExecutor(len(requests)) as pool:
            together = list(pool.map(post, requests))
        alone = [post(request) for request in requests]
        assert all(response.status_code == 200 for response in together + alone)
        assert [response.headers["x-answer"] for response in together] == ["estimate"] * 4 + ["samples"]
        assert [response.headers["x-batch-samples"] for response in together] == ["4"] * 4 + ["1"]
        for batched, single in zip(together, alone, strict=True):
            assert batched.content == single.content
        assert together[0].content == together[3].content  # the same image, other seeds: the same estimate
        assert metric(url, "xraysr_upscale_answers_total", 'answer="estimate"') == 8
        assert metric(url, "xraysr_upscale_answers_total", 'answer="samples"') == 2


def test_four_concurrent_deflate_bombs_are_422_without_the_memory(tiny_engine_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("pydicom", reason="DICOM input needs pydicom")
    bomb = deflate_bomb(900 << 20)
    dicom = {"content-type": "application/dicom"}
    with local_server_process(tiny_engine_dir.parent, tiny_engine_dir.name, log=tmp_path / "log") as (url, server):
        httpx.post(f"{url}/upscale", content=deflate_bomb(1 << 20), headers=dicom, timeout=30)  # pydicom imported
        before = memory_mb(server.pid, "VmHWM")
        with ThreadPoolExecutor(4) as pool:
            responses = list(
                pool.map(lambda _: httpx.post(f"{url}/upscale", content=bomb, headers=dicom, timeout=60), range(4))
            )
        assert [response.status_code for response in responses] == [422] * 4
        assert all("inflates to more than" in response.json()["detail"] for response in responses)
        assert memory_mb(server.pid, "VmHWM") - before < 100


@pytest.mark.slow
def test_clients_that_time_out_cost_no_more_than_the_work_already_running(lr_png: bytes, tmp_path: Path) -> None:
    env = {"XRAYSR_MAX_BATCH": "1", "XRAYSR_MAX_QUEUED_REQUESTS": "16"}
    with local_server_process(DEFAULT_ENGINES, "cxr-default", env=env, log=tmp_path / "log") as (url, _):
        outcomes: list[int | str] = []
        lock = threading.Lock()

        def impatient(seed: int) -> None:
            try:
                params = {"seed": seed, "samples": 1, "steps": 25}
                status: int | str = httpx.post(
                    f"{url}/upscale", params=params, content=lr_png, headers=PNG, timeout=1.5
                ).status_code
            except httpx.TimeoutException:
                status = "timed out"
            with lock:
                outcomes.append(status)

        threads = [threading.Thread(target=impatient, args=(seed,)) for seed in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        answered = outcomes.count(200)
        assert answered + outcomes.count("timed out") == 16 and answered < 16
        time.sleep(2.0)  # anything still computing would finish, or start, by now
        started = metric(url, "xraysr_batch_requests_count")
        completed = started - metric(url, "xraysr_batches_stopped_total")
        # Run to the end: the answered ones, and at most the one running when the last clients left. A batch
        # started while its client was still there stops at its next step once that client goes.
        assert completed <= answered + 1
        time.sleep(1.0)
        assert metric(url, "xraysr_batch_requests_count") == started
        assert metric(url, "xraysr_upscale_abandoned_total", 'reason="client_disconnected"') == 16 - answered
        assert metric(url, "xraysr_requests_total", 'endpoint="/upscale",status="200"') == answered


@pytest.mark.slow
def test_overload_is_only_200_503_504_within_deadlines_and_bounded_memory(lr_png: bytes, tmp_path: Path) -> None:
    deadline = 1.0
    env = {
        "XRAYSR_MAX_BATCH": "1",
        "XRAYSR_MAX_QUEUED_REQUESTS": "4",
        "XRAYSR_REQUEST_TIMEOUT_S": str(deadline),
    }
    with local_server_process(DEFAULT_ENGINES, "cxr-default", env=env, log=tmp_path / "log") as (url, server):
        params = {"samples": 1, "steps": 10}
        httpx.post(f"{url}/upscale", params=params, content=lr_png, headers=PNG, timeout=30)  # warm
        before = memory_mb(server.pid)
        statuses: dict[int, int] = {}
        slowest = 0.0
        lock = threading.Lock()

        def client(count: int) -> None:
            nonlocal slowest
            with httpx.Client(base_url=url, timeout=30) as http:
                for _ in range(count):
                    started = time.monotonic()
                    status = http.post("/upscale", params=params, content=lr_png, headers=PNG).status_code
                    with lock:
                        statuses[status] = statuses.get(status, 0) + 1
                        slowest = max(slowest, time.monotonic() - started)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(client, [125] * 16))
        assert sum(statuses.values()) == 2000
        assert set(statuses) <= {200, 503, 504}, statuses
        assert statuses.get(200, 0) > 0 and statuses.get(503, 0) > 0
        # A 504 is answered at the deadline, not when the step in flight ends; this bounds both, with slack
        # for a loaded 2-core machine.
        assert slowest < deadline + 0.5
        assert memory_mb(server.pid) - before < 50
        assert metric(url, "xraysr_upscale_abandoned_total", 'reason="deadline"') == statuses.get(504, 0)
