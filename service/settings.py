"""The appliance's settings: XRAYSR_* environment variables, overridden by `xraysr serve` flags.

Every value is checked when the settings are built, so a typo stops the service at start-up with one line
that names the setting, instead of surfacing later as a failed request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.manifest import MANIFEST_NAME, manifest_name
from service.validation import describe_validation_error

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


FP16_NEEDS_TENSORRT = (
    "fp16 needs the tensorrt backend (TensorRT builds FP16 engines from the FP32 ONNX); use fp32 or int8 on onnxruntime"
)


class SettingsError(ValueError):
    """Settings that cannot serve; the message is one line, fit for the end of a failed command."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XRAYSR_", extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", min_length=1, description="Loopback by default: exposing it is a choice.")
    port: int = Field(8000, ge=1, le=65535)
    engines_dir: Path = Field(Path("engines"), description="The folder holding one sub-folder per model.")
    model: str = Field("cxr-default", pattern=r"^[A-Za-z0-9_.-]+$", description="engines_dir/<model> is served.")
    backend: Literal["onnxruntime", "tensorrt"] = "onnxruntime"
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp32", description="fp32 serves manifest.json, int8 manifest.int8.json (`xraysr quantize`)."
    )
    threads: int | None = Field(None, ge=1, description="Intra-op threads per inference; None lets the runtime pick.")
    max_concurrent_requests: int = Field(1, ge=1, description="Upscales running at once.")
    max_queued_requests: int = Field(8, ge=0, description="Upscales waiting for a slot; more are refused with 503.")
    max_body_bytes: int = Field(1 << 20, ge=1 << 10, description="Larger request bodies are refused with 413.")
    trt_cache_dir: Path | None = Field(
        None, description="TensorRT engines built on this device (default engines_dir/model/tensorrt)."
    )
    log_level: LogLevel = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @property
    def model_dir(self) -> Path:
        return self.engines_dir / self.model

    @model_validator(mode="after")
    def _model_dir_holds_a_manifest(self) -> Settings:
        if self.precision == "fp16" and self.backend == "onnxruntime":
            raise ValueError(FP16_NEEDS_TENSORRT)
        name = manifest_name(self.precision)
        if name != MANIFEST_NAME and self.model_dir.is_dir() and not (self.model_dir / name).is_file():
            raise ValueError(
                f"model folder {self.model_dir} has no {name} for --precision {self.precision}; "
                f"quantize it with `xraysr quantize --engines {self.model_dir} --calib <prepared data folder>`, "
                "or serve its manifest.json with --precision fp32"
            )
        if not (self.model_dir / name).is_file():
            found = "exists but has no manifest.json" if self.model_dir.is_dir() else "does not exist"
            raise ValueError(
                f"model folder {self.model_dir} {found} (engines_dir={self.engines_dir}, model={self.model}); "
                f"export one with `xraysr export --checkpoint <sr checkpoint> --out {self.model_dir}` "
                "(`make train-default` trains the default), or point --engines-dir/XRAYSR_ENGINES_DIR and "
                "--model/XRAYSR_MODEL at an existing engines/<model> folder"
            )
        return self


def load_settings(**overrides: Any) -> Settings:
    """XRAYSR_* from the environment, then ``overrides`` (command-line flags; None means not given)."""
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from error
