"""`xraysr export`: an `xraysr train` checkpoint → engines/<model>/ (three ONNX files + manifest.json).

One helper exports every component (diffusers' scripts/convert_vae_diff_to_onnx.py shape); the manifest
is the service's own pydantic model, so training cannot write a contract the service does not read.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from xraysr.service.manifest import (
    Component,
    ImageSpec,
    LatentSpec,
    Manifest,
    SamplerSpec,
    TensorSpec,
    sha256_of,
    write_manifest,
)
from xraysr.service.sampler import ddim_step
from xraysr.training.diffusion import ConditionEncoder, make_training_scheduler
from xraysr.training.pipeline import TorchPipeline

logger = logging.getLogger(__name__)

OPSET = 17


# torch's bicubic kernel (Keys' cubic convolution): the same a as cv2.INTER_CUBIC and ONNX Resize's default.
CUBIC_A = -0.75


def bicubic_matrix(in_size: int, out_size: int) -> Tensor:
    """The (out_size, in_size) matrix A with A @ x = F.interpolate(x, mode="bicubic", align_corners=False) along one
    axis: half-pixel centres, Keys' kernel with a = -0.75, taps past the border clamped to the edge pixel.

    Bicubic is separable, so a 2-D upsampling is A @ image @ A^T: two MatMuls every ONNX consumer runs, where a
    cubic Resize is refused by TensorRT 8.2 (the original Jetson Nano's JetPack 4.6).
    """
    scale = in_size / out_size
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for out_index in range(out_size):
        # aten's area_pixel_compute_source_index for cubic: no clamp at 0, the taps are clamped instead.
        source = scale * (out_index + 0.5) - 0.5
        first = int(np.floor(source))
        t = source - first
        distances = (t + 1.0, t, 1.0 - t, 2.0 - t)
        for tap, distance in enumerate(distances):
            if distance <= 1.0:
                weight = ((CUBIC_A + 2) * distance - (CUBIC_A + 3)) * distance * distance + 1
            else:
                weight = ((CUBIC_A * distance - 5 * CUBIC_A) * distance + 8 * CUBIC_A) * distance - 4 * CUBIC_A
            matrix[out_index, min(max(first - 1 + tap, 0), in_size - 1)] += weight
    return torch.from_numpy(matrix).float()


class _Encoder(nn.Module):
    """``ConditionEncoder`` with its bicubic upsampling as ``A @ lr_image @ A^T`` (constant A): no Resize node."""

    def __init__(self, condition_encoder: ConditionEncoder, lr_size: int) -> None:
        super().__init__()
        self.vae = condition_encoder.vae
        self.register_buffer("upsample", bicubic_matrix(lr_size, lr_size * condition_encoder.scale_factor))

    def forward(self, lr_image: Tensor) -> Tensor:
        # The clamp of diffusion.upsample_bicubic: bicubic overshoots [-1, 1] at edges.
        upsampled = (self.upsample @ lr_image @ self.upsample.T).clamp(-1.0, 1.0)
        return self.vae.encode(upsampled)


class _Decoder(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, hr_latent: Tensor) -> Tensor:
        return self.vae.decode(hr_latent).clamp(-1.0, 1.0)


class _UNetStep(nn.Module):
    """The UNet and one deterministic DDIM update (eq. (12), sigma = 0) in one graph: x_t → x_{t-Δ}.

    The alphas are inputs, not constants, so one graph serves any step count; a runtime that keeps the
    sample on the GPU then needs no host round trip between steps. The update is service/sampler.py's
    ``ddim_step``, traced, and tests/training/test_export_step.py pins the graph to ``DDIMSampler.step``.
    """

    def __init__(self, unet: nn.Module, prediction_type: str) -> None:
        super().__init__()
        self.unet = unet
        self.prediction_type = prediction_type

    def forward(
        self, sample: Tensor, timestep: Tensor, lr_latent: Tensor, alpha_t: Tensor, alpha_prev: Tensor
    ) -> Tensor:
        model_output = self.unet(sample, timestep, lr_latent)
        # One alpha per batch item, broadcast over channels and pixels.
        alpha_t = alpha_t.reshape(-1, 1, 1, 1)
        alpha_prev = alpha_prev.reshape(-1, 1, 1, 1)
        return ddim_step(model_output, sample, alpha_t, alpha_prev, self.prediction_type)


UNET_STEP_INPUTS = ["sample", "timestep", "lr_latent", "alpha_t", "alpha_prev"]


def export_unet_step(pipeline: TorchPipeline, path: Path) -> Component:
    """Writes ``unet_step.onnx``: (sample, timestep, lr_latent, alpha_t, alpha_prev) → next_sample."""
    config = pipeline.config
    latent_size = config.data.hr_size // pipeline.vae.downsample_factor
    latent = torch.zeros(1, pipeline.vae.latent_channels, latent_size, latent_size)
    scalar = torch.full((1,), 0.5)
    args = (latent, torch.full((1,), 999.0), latent, scalar, scalar)
    module = _UNetStep(pipeline.unet, config.diffusion.prediction_type)
    with torch.no_grad():
        onnx_export(
            module,
            args,
            path,
            UNET_STEP_INPUTS,
            ["next_sample"],
            {name: {0: "batch"} for name in [*UNET_STEP_INPUTS, "next_sample"]},
        )
    logger.info("exported %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return Component(
        path=path.name,
        sha256=sha256_of(path),
        inputs=tuple(_spec(name, arg) for name, arg in zip(UNET_STEP_INPUTS, args, strict=True)),
        outputs=(_spec("next_sample", latent),),
    )


def onnx_export(
    model: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int = OPSET,
) -> None:
    # dynamo=False: the TorchScript exporter needs no onnxscript and emits plain ops that ONNX Runtime's
    # quantize_static and TensorRT's parser both take.
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model.eval(),
        args,
        str(path),
        input_names=input_names,
        output_names=output_names,
        dynamic_axes=dynamic_axes,
        opset_version=opset,
        do_constant_folding=True,
        dynamo=False,
    )


def _spec(name: str, tensor: Tensor) -> TensorSpec:
    return TensorSpec(name=name, shape=("batch", *tensor.shape[1:]), dtype="float32")


def export_model(
    checkpoint: Path,
    out_dir: Path,
    model_name: str,
    version: str | None = None,
    steps: tuple[int, int, int] = (10, 25, 50),
    step_graph: bool = True,
    default_samples: int = 1,
    final_timestep: int | None = None,
    default_answer: str = "estimate",
) -> Manifest:
    """Exports the EMA weights; ``steps`` is the supported (min, default, max) sampling step count, and
    ``default_samples`` the diffusion samples a request averages when it names none (docs/RESULTS.md), and
    ``final_timestep`` where the loop stops (default: the run's ``diffusion.final_timestep``), and
    ``default_answer`` what a request naming neither steps nor samples gets ("estimate": one pass; "samples").

    ``step_graph`` (default on) also exports ``unet_step.onnx`` (UNet + DDIM update, see ``export_unet_step``) as
    the manifest's optional ``unet_step`` component: TensorRT then runs the whole loop on the GPU, while ONNX
    Runtime keeps the host loop over ``unet.onnx``.
    """
    pipeline = TorchPipeline.from_checkpoint(checkpoint)
    config = pipeline.config
    if config.diffusion.eta != 0.0:
        raise ValueError("the appliance samples with deterministic DDIM (eta = 0); this run was configured otherwise")
    latent_size = config.data.hr_size // pipeline.vae.downsample_factor
    latent_channels = pipeline.vae.latent_channels
    lr_image = torch.zeros(1, 1, config.data.lr_size, config.data.lr_size)
    lr_latent = torch.zeros(1, latent_channels, latent_size, latent_size)
    timestep = torch.full((1,), 999.0)
    batch = {0: "batch"}
    encoder = _Encoder(pipeline.condition_encoder, config.data.lr_size)
    signatures = {
        "encoder": (encoder, (lr_image,), ["lr_image"], ["lr_latent"]),
        "unet": (
            pipeline.unet,
            (lr_latent, timestep, lr_latent),
            ["noisy_latent", "timestep", "lr_latent"],
            ["prediction"],
        ),
        "decoder": (_Decoder(pipeline.vae), (lr_latent,), ["hr_latent"], ["hr_image"]),
    }
    components = {}
    with torch.no_grad():
        for name, (module, args, inputs, outputs) in signatures.items():
            path = out_dir / f"{name}.onnx"
            onnx_export(module, args, path, inputs, outputs, {tensor: batch for tensor in inputs + outputs})
            result = module(*args)
            components[name] = Component(
                path=path.name,
                sha256=sha256_of(path),
                inputs=tuple(_spec(tensor_name, arg) for tensor_name, arg in zip(inputs, args, strict=True)),
                outputs=(_spec(outputs[0], result),),
            )
            logger.info("exported %s (%.1f MB)", path, path.stat().st_size / 1e6)
    if step_graph:
        components["unet_step"] = export_unet_step(pipeline, out_dir / "unet_step.onnx")

    minimum, default, maximum = steps
    floor = final_timestep if final_timestep is not None else config.diffusion.final_timestep
    alphas_cumprod = make_training_scheduler(config.diffusion).alphas_cumprod
    manifest = Manifest(
        model=model_name,
        version=version or f"{model_name}-step{pipeline.step}-{datetime.date.today():%Y%m%d}",
        precision="fp32",
        components=components,
        image=ImageSpec(lr_size=config.data.lr_size, hr_size=config.data.hr_size),
        latent=LatentSpec(
            channels=latent_channels,
            size=latent_size,
            target=config.diffusion.target,
            target_scale=pipeline.target_scale,
        ),
        sampler=SamplerSpec(
            prediction_type=config.diffusion.prediction_type,
            num_train_timesteps=config.diffusion.num_train_timesteps,
            alphas_cumprod=tuple(float(a) for a in alphas_cumprod),
            min_steps=minimum,
            default_steps=default,
            max_steps=maximum,
            default_samples=default_samples,
            default_answer=default_answer,
            timestep_spacing="trailing" if floor is None else "floored",
            final_timestep=floor,
        ),
        provenance={"run_name": config.run_name, "training_step": pipeline.step, "checkpoint": checkpoint.name},
    )
    write_manifest(manifest, out_dir)
    return manifest
