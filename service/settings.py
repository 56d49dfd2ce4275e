"""The appliance's settings: XRAYSR_* environment variables, overridden by `xraysr serve` flags.

Every value is checked when the settings are built, so a typo stops the service at start-up with one line
that names the setting, instead of surfacing later as a failed request.
"""

from __future__ import annotations

import ipaddress
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from xraysr.service.cpu_features import auto_precision, cpu_flags
from xraysr.service.dicom_uids import check_uid_root
from xraysr.service.manifest import MANIFEST_NAME, MAX_SAMPLES, Precision, manifest_name
from xraysr.service.validation import describe_validation_error

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


FP16_NEEDS_TENSORRT = (
    "fp16 needs the tensorrt backend (TensorRT builds FP16 engines from the FP32 ONNX); use fp32 or int8 on onnxruntime"
)


# The 1st percentile (40.30 dB) of the shipped default model's (cxr-default 3.0.0's estimate) X-LR-Consistency-PSNR
# on the 333 adult validation images (docs/RESULTS.md; docs/scripts/fidelity_guard.py --split val --group adult).
LR_CONSISTENCY_LOW_DB = 40.3


def packaged_engines_dir() -> Path:
    """The shipped default model's parent folder inside the installed package (xraysr/engines, mapped from the
    repository's engines/ by pyproject.toml), so `xraysr serve` serves it from any directory, from a wheel or a
    (strict editable) checkout alike."""
    engines = files("xraysr") / "engines"
    if not isinstance(engines, Path):
        # ONNX Runtime and TensorRT open model files by path; a zipped install has none to give them.
        raise RuntimeError(f"xraysr is installed as an archive ({engines}); install it as files to serve its model")
    return engines


PACKAGED_ENGINES_DIR = packaged_engines_dir()


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("0.0.0.0", "::")


def check_origin(origin: str) -> str:
    """A web origin as browsers send it: ``scheme://host[:port]``, nothing after; a ValueError otherwise."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query or parts.fragment:
        raise ValueError(f"{origin!r} is not a web origin: write scheme://host[:port], e.g. https://pacs.example.org")
    return origin.rstrip("/").lower()


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` only ever means this machine: "localhost" or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class SettingsError(ValueError):
    """Settings that cannot serve; the message is one line, fit for the end of a failed command."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XRAYSR_", extra="forbid", frozen=True)
    _precision_choice: str = PrivateAttr("set")

    host: str = Field("127.0.0.1", min_length=1, description="Loopback by default: exposing it is a choice.")
    port: int = Field(8000, ge=1, le=65535)
    engines_dir: Path = Field(
        PACKAGED_ENGINES_DIR, description="The folder holding one sub-folder per model (default: the packaged one)."
    )
    model: str = Field("cxr-default", pattern=r"^[A-Za-z0-9_.-]+$", description="engines_dir/<model> is served.")
    backend: Literal["onnxruntime", "tensorrt"] = "onnxruntime"
    precision: Literal["auto", "fp32", "fp16", "int8"] = Field(
        "auto",
        description="fp32 serves manifest.json, int8 manifest.int8.json (`xraysr quantize`); auto: int8 on a CPU "
        "with VNNI or AMX when the model has it, else fp32 (service/cpu_features.py). Resolved when settings load.",
    )
    threads: int | None = Field(None, ge=1, description="Intra-op threads per inference; None lets the runtime pick.")
    max_concurrent_requests: int = Field(1, ge=1, description="Batches running at once.")
    max_queued_requests: int = Field(8, ge=0, description="Upscales waiting for a batch; more are refused with 503.")
    max_batch: int = Field(
        MAX_SAMPLES,
        ge=1,
        le=64,
        description="Diffusion samples run as one engine batch: concurrent requests with the same steps are "
        "gathered up to this many samples. 1 turns batching off.",
    )
    max_batch_delay_ms: float = Field(
        5.0, ge=0, le=1000, description="How long the first request of a batch waits for others to join it."
    )
    max_decoding: int = Field(2, ge=1, le=64, description="Bodies decoded at once (bounds decoder memory).")
    max_body_bytes: int = Field(1 << 20, ge=1 << 10, description="Larger request bodies are refused with 413.")
    request_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="Deadline per upscale (504 past it); X-Request-Timeout may lower it."
    )
    shutdown_grace_s: float = Field(
        8.0, ge=0, le=600, description="After SIGTERM, admitted work has this long to finish (docker stop: 10 s)."
    )
    header_timeout_s: float = Field(10.0, gt=0, le=600, description="A request's headers must arrive within this.")
    body_timeout_s: float = Field(30.0, gt=0, le=3600, description="A request's body must arrive within this (408).")
    keep_alive_s: float = Field(5.0, gt=0, le=600, description="Idle keep-alive connections are closed after this.")
    max_connections: int = Field(64, ge=1, le=65536, description="Open connections; more are closed on accept.")
    api_key: SecretStr | None = Field(
        None, min_length=16, description="When set, /upscale needs 'Authorization: Bearer <api_key>'."
    )
    protect_metrics: bool = Field(False, description="/metrics needs the bearer token too (needs api_key).")
    allow_unauthenticated: bool = Field(
        False, description="Serve without api_key on a non-loopback address (behind a proxy that authenticates)."
    )
    trt_cache_dir: Path | None = Field(
        None,
        description="TensorRT engines built on this device (default engines_dir/model/tensorrt when writable, "
        "else ~/.cache/xraysr/tensorrt/<model>).",
    )
    lr_consistency_low_db: float = Field(
        LR_CONSISTENCY_LOW_DB,
        ge=0,
        le=100,
        description="An answer whose X-LR-Consistency-PSNR is below this is flagged (X-LR-Consistency-Low: 1): "
        "shrunk back, it departs from its input more than 99% of the shipped model's validation answers did.",
    )
    max_shrink_body_bytes: int = Field(
        64 << 20, ge=1 << 10, description="Larger POST /shrink bodies are refused with 413 (full-size images)."
    )
    shrink_upload_budget_bytes: int = Field(
        256 << 20,
        ge=1 << 10,
        description="Bytes concurrent POST /shrink uploads may hold together (each what it declares, or "
        "max_shrink_body_bytes when chunked); one that does not fit is refused with 503 before it is read.",
    )
    allowed_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Web origins (scheme://host[:port], comma-separated) whose pages may POST here, with CORS; "
        "a browser's cross-site POST from any other is refused with 403. Same-origin pages and non-browser "
        "clients need nothing.",
    )
    allowed_hosts: Annotated[tuple[str, ...] | None, NoDecode] = Field(
        None,
        description="Host header values served (comma-separated names or addresses, a leading '*.' for "
        "sub-domains, or '*' for any); others get 400, which stops DNS rebinding. Unset: localhost and the "
        "loopback addresses, plus --host when it names one address; any host when --host is 0.0.0.0 or ::.",
    )
    uncertainty_coverage: float = Field(
        0.9,
        ge=0.5,
        le=0.99,
        description="The probability the JSON answer's per-pixel interval (uncertainty_png_base64) holds the true "
        "value with, on images like the model's calibration ones (service/interval.py).",
    )
    log_level: LogLevel = "INFO"
    dicom_uid_root: str | None = Field(
        None,
        description="Root of the UIDs in DICOM answers: your organisation's registered root (at most 40 characters). "
        "Unset: UUID-derived UIDs (2.25.<UUID>), unique without registering anything (service/dicom_uids.py).",
    )

    @field_validator("dicom_uid_root", mode="before")
    @classmethod
    def _uid_root(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None  # XRAYSR_DICOM_UID_ROOT= (empty) means unset
        return check_uid_root(value) if isinstance(value, str) else value

    @field_validator("allowed_origins", "allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_origin(origin) for origin in origins)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @property
    def model_dir(self) -> Path:
        return self.engines_dir / self.model

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def trusted_hosts(self) -> tuple[str, ...]:
        """``allowed_hosts``, or its default for ``host``."""
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        if self.host in WILDCARD_ADDRESSES:
            return ("*",)  # clients reach it by names this process cannot know; api_key guards it (README)
        return tuple(dict.fromkeys((*LOOPBACK_NAMES, self.host.lower())))

    @model_validator(mode="after")
    def _exposure_is_a_choice(self) -> Settings:
        if self.shrink_upload_budget_bytes < self.max_shrink_body_bytes:
            raise ValueError(
                f"shrink_upload_budget_bytes ({self.shrink_upload_budget_bytes}) is under max_shrink_body_bytes "
                f"({self.max_shrink_body_bytes}): no /shrink upload could ever fit; raise the budget"
            )
        if self.protect_metrics and self.api_key is None:
            raise ValueError("protect_metrics needs api_key (XRAYSR_API_KEY): there is no token to protect it with")
        if not self.is_loopback and self.api_key is None and not self.allow_unauthenticated:
            raise ValueError(
                f"host {self.host} accepts other machines, and no api_key is set: set XRAYSR_API_KEY (16+ "
                "characters; clients send 'Authorization: Bearer <key>'), or XRAYSR_ALLOW_UNAUTHENTICATED=1 "
                "if a reverse proxy authenticates (README: Exposing xraysr)"
            )
        return self

    @property
    def served_precision(self) -> Precision:
        """``precision`` with auto resolved (the validator resolves it before anything can read it)."""
        if self.precision == "auto":
            raise RuntimeError("precision auto was not resolved")
        return self.precision

    @property
    def precision_choice(self) -> str:
        """How the precision was chosen: "auto: int8, this CPU has avx512_vnni", or "set" when it was named."""
        return self._precision_choice

    @model_validator(mode="after")
    def _model_dir_holds_a_manifest(self) -> Settings:
        if self.precision == "auto":
            has_int8 = (self.model_dir / manifest_name("int8")).is_file()
            precision, self._precision_choice = auto_precision(self.backend, has_int8, cpu_flags())
            object.__setattr__(self, "precision", precision)  # frozen: resolved once, here, before anything reads it
        if self.precision == "fp16" and self.backend == "onnxruntime":
            raise ValueError(FP16_NEEDS_TENSORRT)
        name = manifest_name(self.served_precision)
        if name != MANIFEST_NAME and self.model_dir.is_dir() and not (self.model_dir / name).is_file():
            raise ValueError(
                f"model folder {self.model_dir} has no {name} for --precision {self.precision}; "
                f"quantize it with `xraysr quantize --model-dir {self.model_dir} --calib <prepared data folder>`, "
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
