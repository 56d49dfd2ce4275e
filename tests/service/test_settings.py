"""service/settings.py: XRAYSR_* variables, flags over them, and one clear line for every bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from xraysr.service.cpu_features import cpu_flags
from xraysr.service.settings import PACKAGED_ENGINES_DIR, Settings, SettingsError, load_settings


@pytest.fixture()
def engines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """engines/cxr-default/manifest.json under the working directory, served from there, no other XRAYSR_*."""
    for name in list(__import__("os").environ):
        if name.startswith("XRAYSR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    for model in ("cxr-default", "other"):
        (tmp_path / "engines" / model).mkdir(parents=True)
        (tmp_path / "engines" / model / "manifest.json").write_text("{}")
    monkeypatch.setenv("XRAYSR_ENGINES_DIR", "engines")
    return tmp_path / "engines"


def test_defaults_serve_the_default_model_on_loopback(engines: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XRAYSR_ENGINES_DIR")
    settings = load_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    # The packaged model, wherever the command runs from: the repository's engines/ through xraysr/engines (a
    # strict editable install links each file).
    assert settings.model_dir == PACKAGED_ENGINES_DIR / "cxr-default"
    shipped = Path(__file__).resolve().parents[2] / "engines" / "cxr-default" / "manifest.json"
    assert (settings.model_dir / "manifest.json").resolve() == shipped
    assert (settings.backend, settings.threads) == ("onnxruntime", None)
    # auto: int8 where this CPU has VNNI or AMX (the default model ships manifest.int8.json), else fp32.
    expected = "int8" if {"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags() else "fp32"
    assert settings.precision == expected and settings.precision_choice.startswith(f"auto: {expected}")
    assert (settings.max_concurrent_requests, settings.max_queued_requests) == (1, 8)
    assert settings.max_body_bytes == 1048576
    assert settings.log_level == "INFO"


def test_environment_then_flags(engines: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XRAYSR_PORT", "9000")
    monkeypatch.setenv("XRAYSR_MODEL", "other")
    monkeypatch.setenv("XRAYSR_THREADS", "2")
    monkeypatch.setenv("XRAYSR_LOG_LEVEL", "debug")
    settings = load_settings(port=9001, threads=None)  # None: the flag was not given
    assert (settings.port, settings.model, settings.threads, settings.log_level) == (9001, "other", 2, "DEBUG")
    assert settings.model_dir == Path("engines/other")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"port": 0}, "port: Input should be greater than or equal to 1 (got 0)"),
        ({"port": 65536}, "port: Input should be less than or equal to 65535 (got 65536)"),
        ({"backend": "cuda"}, "backend: Input should be 'onnxruntime' or 'tensorrt' (got 'cuda')"),
        ({"precision": "int4"}, "precision: Input should be 'auto', 'fp32', 'fp16' or 'int8' (got 'int4')"),
        ({"threads": 0}, "threads: Input should be greater than or equal to 1 (got 0)"),
        ({"max_concurrent_requests": 0}, "max_concurrent_requests: Input should be greater than or equal to 1"),
        ({"max_queued_requests": -1}, "max_queued_requests: Input should be greater than or equal to 0"),
        ({"max_body_bytes": 100}, "max_body_bytes: Input should be greater than or equal to 1024 (got 100)"),
        ({"log_level": "loud"}, "log_level: Input should be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"),
        ({"model": "../etc"}, "model: String should match pattern"),
        ({"max_batch": 0}, "max_batch: Input should be greater than or equal to 1"),
        ({"request_timeout_s": 0}, "request_timeout_s: Input should be greater than 0"),
        ({"api_key": "short"}, "api_key: Value should have at least 16 items"),
        ({"protect_metrics": True}, "protect_metrics needs api_key (XRAYSR_API_KEY)"),
        ({"host": "0.0.0.0"}, "host 0.0.0.0 accepts other machines, and no api_key is set: set XRAYSR_API_KEY"),
        ({"host": "xraysr.hospital.example"}, "host xraysr.hospital.example accepts other machines"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_setting(engines: Path, overrides: dict, message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(**overrides)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_bad_environment_variable_is_refused_too(engines: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XRAYSR_PORT", "eighty")
    with pytest.raises(SettingsError, match="port: Input should be a valid integer"):
        load_settings()


def test_a_missing_model_folder_names_the_path_and_how_to_get_one(engines: Path) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(model="cxr-large")
    message = str(raised.value)
    assert message.startswith("model folder engines/cxr-large does not exist")
    assert "xraysr export --checkpoint <sr checkpoint> --out engines/cxr-large" in message
    assert "--engines-dir" in message and "\n" not in message


def test_a_model_folder_without_manifest_is_refused(engines: Path) -> None:
    (engines / "cxr-default" / "manifest.json").unlink()
    with pytest.raises(SettingsError, match="model folder engines/cxr-default exists but has no manifest.json"):
        load_settings()


def test_settings_are_frozen_and_refuse_unknown_names(engines: Path) -> None:
    settings = load_settings()
    with pytest.raises(ValueError):
        settings.port = 1  # type: ignore[misc]
    with pytest.raises(SettingsError, match="colour: Extra inputs are not permitted"):
        load_settings(colour="yes")
    assert isinstance(settings, Settings)


def test_fp16_on_onnxruntime_is_refused_with_the_way_out(engines: Path) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(precision="fp16")
    assert str(raised.value) == (
        "fp16 needs the tensorrt backend (TensorRT builds FP16 engines from the FP32 ONNX); "
        "use fp32 or int8 on onnxruntime"
    )


def test_int8_needs_the_quantized_manifest(engines: Path) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(precision="int8")
    message = str(raised.value)
    assert message.startswith("model folder engines/cxr-default has no manifest.int8.json for --precision int8")
    assert "xraysr quantize --model-dir engines/cxr-default --calib <prepared data folder>" in message
    (engines / "cxr-default" / "manifest.int8.json").write_text("{}")
    assert load_settings(precision="int8").precision == "int8"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_needs_no_token(engines: Path, host: str) -> None:
    assert load_settings(host=host).api_key is None


def test_a_wider_bind_takes_a_token_or_an_explicit_opt_out(engines: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XRAYSR_API_KEY", "s" * 32)
    settings = load_settings(host="0.0.0.0")
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "s" * 32
    assert "s" * 32 not in repr(settings)  # a SecretStr: never in a log line or a traceback
    monkeypatch.delenv("XRAYSR_API_KEY")
    monkeypatch.setenv("XRAYSR_ALLOW_UNAUTHENTICATED", "1")
    assert load_settings(host="0.0.0.0").allow_unauthenticated
