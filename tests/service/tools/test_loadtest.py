"""service/tools/loadtest.py against a real server: counts, statuses and the server's own batch sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from xraysr.service.cli import main
from xraysr.service.tools.loadtest import check_target, run_load
from xraysr.service.tools.local_server import local_server


def test_a_load_run_reports_every_request_and_the_servers_batches(
    tiny_engine_dir: Path, lr_png: bytes, tmp_path: Path
) -> None:
    env = {"XRAYSR_MAX_BATCH": "4", "XRAYSR_MAX_BATCH_DELAY_MS": "50", "XRAYSR_MAX_QUEUED_REQUESTS": "8"}
    with local_server(tiny_engine_dir.parent, tiny_engine_dir.name, env=env, log=tmp_path / "log") as url:
        report = run_load(url, lr_png, clients=4, requests=12, params={"samples": 1})
        assert dict(report.statuses) == {200: 12} and len(report.ok_latencies) == 12
        assert report.batched_requests == 12 and report.batched_samples == 12
        assert 3 <= report.batches < 12  # four clients at a time, gathered into batches of up to four
        assert sum(report.batch_requests.values()) > 0
        summary = report.summary()
        assert "12 answered of 12 sent by 4 clients" in summary and "status counts: 200: 12" in summary
        assert "p50" in summary and f"server batches: {report.batches:.0f}" in summary

        image = tmp_path / "lr.png"
        image.write_bytes(lr_png)
        assert main(["loadtest", "--url", url, "--image", str(image), "--clients", "2", "--requests", "4"]) == 0


@pytest.mark.parametrize(
    ("url", "allow_remote", "message"),
    [
        ("http://10.0.0.5:8000", False, "10.0.0.5 is not loopback: pass --allow-remote"),
        ("http://pacs.hospital.example:8000", False, "not loopback"),
        ("ftp://127.0.0.1:8000", False, "--url must be http://host:port"),
    ],
)
def test_only_loopback_unless_asked(url: str, allow_remote: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_target(url, allow_remote)


def test_a_remote_target_is_allowed_on_purpose_and_the_run_is_bounded() -> None:
    assert check_target("http://10.0.0.5:8000", allow_remote=True) == ("10.0.0.5", 8000)
    with pytest.raises(ValueError, match="--clients must be between 1 and 256"):
        run_load("http://127.0.0.1:1", b"", clients=1000)
    with pytest.raises(ValueError, match="give one of --requests or --duration"):
        run_load("http://127.0.0.1:1", b"", requests=None)
