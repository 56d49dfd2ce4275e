"""The engines/ contract: ``engines/<model>/manifest.json``, defined here and written by training/export.py.

A manifest names each ONNX component with its checksum and tensor signature, and carries everything the
appliance needs to run the reverse diffusion without torch or diffusers: pixel normalisation, latent
scaling, and the sampler's noise table. The service refuses a manifest it does not understand, or a file
whose checksum differs, with a message that says which and why.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from xraysr.service.validation import describe_validation_error

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
Precision = Literal["fp32", "fp16", "int8"]
AnswerKind = Literal["estimate", "samples"]
COMPONENTS = ("encoder", "unet", "decoder")
ComponentName = Literal["encoder", "unet", "decoder", "unet_step"]
# The most diffusion samples one request may average (``samples=K``): the pipeline runs them as one batch,
# so this is also the largest batch TensorRT engines are built for. Eight keeps the worst request at 8× the
# compute of one, and the standard error of the mean at a third of one sample's spread.
MAX_SAMPLES = 8


class _Contract(BaseModel):
    # An unknown key means a newer writer; refusing it beats silently ignoring what it meant.
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Contract):
    name: str
    shape: tuple[int | str, ...] = Field(description="Integers, or a name for a dynamic axis ('batch').")
    dtype: Literal["float32", "float16", "int64"]


class Component(_Contract):
    path: str = Field(pattern=r"^[A-Za-z0-9_.-]+\.onnx$", description="A file name beside the manifest.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # What `xraysr quantize` measured and kept: a GPU runtime builds each component at this precision, so the
    # engine that runs is the model whose fidelity docs/RESULTS.md reports. Absent (older manifests): fp32.
    precision: Literal["fp32", "int8"] = Field(
        "fp32", description="int8: the file holds QDQ nodes; fp32: float only (TensorRT may lower it to fp16)."
    )


class ImageSpec(_Contract):
    """8-bit pixels p map to model values x = p / 127.5 - 1 and back by round((x + 1) * 127.5)."""

    lr_size: int = Field(gt=0)
    hr_size: int = Field(gt=0)
    channels: Literal[1] = 1
    normalisation: Literal["uint8_to_minus1_1"] = "uint8_to_minus1_1"


class LatentSpec(_Contract):
    channels: int = Field(gt=0)
    size: int = Field(gt=0)
    target: Literal["residual", "latent"]
    target_scale: float = Field(gt=0)


class SamplerSpec(_Contract):
    kind: Literal["ddim"] = "ddim"
    prediction_type: Literal["epsilon", "sample", "v_prediction"]
    num_train_timesteps: int = Field(gt=1)
    # "floored": even spacing down to final_timestep (service/sampler.py); "trailing": diffusers' trailing.
    timestep_spacing: Literal["trailing", "floored"] = "trailing"
    eta: float = Field(0.0, ge=0.0, le=0.0, description="Deterministic DDIM only: the appliance draws no step noise.")
    alphas_cumprod: tuple[float, ...]
    min_steps: int = Field(ge=1)
    max_steps: int = Field(ge=1)
    default_steps: int = Field(ge=1)
    default_samples: int = Field(
        1,
        ge=1,
        le=MAX_SAMPLES,
        description="Samples averaged when a request names none; absent in manifests written before it existed.",
    )
    default_answer: Literal["estimate", "samples"] = Field(
        "samples",
        description="What a request that names no steps or samples gets: 'estimate', the UNet's one-pass x0 "
        "estimate (service/pipeline.py); 'samples', the loop at default_steps and default_samples (manifests "
        "written before the estimate existed).",
    )
    final_timestep: int | None = Field(
        None,
        ge=0,
        description="Where the loop stops: steps spaced evenly from the last training timestep down to this one, "
        "and the x0 estimate there is the answer. Absent: trailing spacing down to T/steps - 1.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SamplerSpec:
        if len(self.alphas_cumprod) != self.num_train_timesteps:
            raise ValueError(
                f"alphas_cumprod has {len(self.alphas_cumprod)} entries, expected num_train_timesteps "
                f"= {self.num_train_timesteps}"
            )
        if not all(0.0 < a < 1.0 for a in self.alphas_cumprod):
            raise ValueError("alphas_cumprod must lie strictly between 0 and 1")
        if any(later > earlier for earlier, later in zip(self.alphas_cumprod, self.alphas_cumprod[1:], strict=False)):
            raise ValueError("alphas_cumprod must not increase with the timestep")
        if not self.min_steps <= self.default_steps <= self.max_steps <= self.num_train_timesteps:
            raise ValueError(
                f"need min_steps <= default_steps <= max_steps <= num_train_timesteps, got {self.min_steps}, "
                f"{self.default_steps}, {self.max_steps}, {self.num_train_timesteps}"
            )
        if (self.timestep_spacing == "floored") != (self.final_timestep is not None):
            raise ValueError("timestep_spacing floored goes with a final_timestep, and trailing without one")
        if self.final_timestep is not None and self.max_steps > self.num_train_timesteps - self.final_timestep:
            raise ValueError(
                f"max_steps {self.max_steps} distinct timesteps do not fit between {self.num_train_timesteps - 1} "
                f"and final_timestep {self.final_timestep}"
            )
        return self


class IntervalSpec(_Contract):
    """The calibrated per-pixel interval (service/interval.py), written by `xraysr calibrate-interval`."""

    features: tuple[str, ...] = Field(description="The scale model's features, in service/interval.py's order.")
    weights: tuple[float, ...] = Field(description="log σ = weights · features (σ in grey levels).")
    coverages: tuple[float, ...] = Field(description="Calibrated coverages, ascending, within (0, 1).")
    factors: dict[AnswerKind, tuple[float, ...]] = Field(
        description="λ per coverage for each kind of answer: the half-width is λσ."
    )
    calibration: dict[str, str | int | float] = Field(
        default_factory=dict, description="Free-form: the images, split, answers and method it was calibrated on."
    )

    @model_validator(mode="after")
    def _consistent(self) -> IntervalSpec:
        if len(self.weights) != len(self.features):
            raise ValueError(f"{len(self.weights)} weights for {len(self.features)} features")
        if not self.coverages or not all(0.0 < c < 1.0 for c in self.coverages):
            raise ValueError("coverages must be a non-empty list of probabilities strictly between 0 and 1")
        if any(later <= earlier for earlier, later in zip(self.coverages, self.coverages[1:], strict=False)):
            raise ValueError("coverages must ascend")
        for kind, table in self.factors.items():
            if len(table) != len(self.coverages):
                raise ValueError(f"{kind} has {len(table)} factors for {len(self.coverages)} coverages")
            if any(later < earlier for earlier, later in zip(table, table[1:], strict=False)) or min(table) <= 0:
                raise ValueError(f"{kind}'s factors must be positive and must not fall as coverage rises")
        return self


class Manifest(_Contract):
    format_version: Literal[1] = 1
    model: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    version: str = Field(min_length=1)
    precision: Precision = Field(
        "fp32", description="int8: the QDQ files of `xraysr quantize`; components it measured as sensitive stay fp32."
    )
    # unet_step (optional, `xraysr export` with step_graph): the UNet + one DDIM update, for runtimes that keep
    # the whole denoising loop on the GPU; see training/export.py's export_unet_step.
    components: dict[ComponentName, Component]
    image: ImageSpec
    latent: LatentSpec
    sampler: SamplerSpec
    provenance: dict[str, str | int | float] = Field(default_factory=dict, description="Free-form: run, commit…")
    interval: IntervalSpec | None = Field(
        None, description="The calibrated per-pixel interval; absent (older models): the answer carries none."
    )

    @model_validator(mode="after")
    def _all_components(self) -> Manifest:
        missing = [name for name in COMPONENTS if name not in self.components]
        if missing:
            raise ValueError(f"components {missing} are missing; a model needs {list(COMPONENTS)}")
        return self


def served_components(manifest: Manifest, device_loop: bool) -> list[ComponentName]:
    """The components a runtime loads. The host loop (ONNX Runtime) never runs unet_step; a runtime that keeps the
    loop on the device (TensorRT) runs unet_step in place of unet when the model has one, so building or loading
    both would only cost a Jetson minutes of build and megabytes of memory."""
    names = list(manifest.components)
    if "unet_step" not in names:
        return names
    return [name for name in names if name != ("unet" if device_loop else "unet_step")]


class ManifestError(ValueError):
    """A manifest that cannot be read, is not understood, or does not match its files."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_name(precision: Precision = "fp32") -> str:
    """fp32 → manifest.json (written by `xraysr export`), int8 → manifest.int8.json (by `xraysr quantize`).

    fp16 has no file of its own: TensorRT builds FP16 engines from the FP32 ONNX, so it reads manifest.json.
    """
    return "manifest.int8.json" if precision == "int8" else MANIFEST_NAME


def read_manifest(model_dir: Path, precision: Precision = "fp32") -> Manifest:
    """Parses and validates ``model_dir/manifest_name(precision)`` without touching the ONNX files."""
    name = manifest_name(precision)
    path = Path(model_dir) / name
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as error:
        hint = "quantize it with `xraysr quantize`" if precision == "int8" else "is this an engines/<model> folder?"
        raise ManifestError(f"no {name} in {model_dir}: {hint}") from error
    except (OSError, json.JSONDecodeError) as error:
        raise ManifestError(f"cannot read {path}: {error}") from error
    if isinstance(raw, dict) and raw.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"{path} has format_version {raw.get('format_version')!r}; this xraysr understands {FORMAT_VERSION}"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as error:
        raise ManifestError(f"{path} is not a valid xraysr manifest: {describe_validation_error(error)}") from error


def load_manifest(model_dir: Path, precision: Precision = "fp32") -> Manifest:
    """Reads the manifest and checks every component's file exists with the recorded sha256."""
    manifest = read_manifest(model_dir, precision)
    for name, component in manifest.components.items():
        file = Path(model_dir) / component.path
        if not file.is_file():
            raise ManifestError(f"{name} file {file} named in the manifest does not exist")
        actual = sha256_of(file)
        if actual != component.sha256:
            raise ManifestError(
                f"{name} file {file} has sha256 {actual}, the manifest says {component.sha256}: "
                "the file was changed or the manifest belongs to another export"
            )
    return manifest


def write_manifest(manifest: Manifest, model_dir: Path, precision: Precision = "fp32") -> Path:
    path = Path(model_dir) / manifest_name(precision)
    # Write beside, then rename: a reader never sees half a manifest, and a symlinked manifest (a test's
    # copy of engines/<model>) is replaced rather than written through into the shipped file.
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(manifest.model_dump(mode="json"), indent=1) + "\n")
    os.replace(partial, path)
    return path
