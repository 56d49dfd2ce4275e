"""`xraysr export`: an `xraysr train` checkpoint → engines/<model>/ (three ONNX files + manifest.json).

One helper exports every component (diffusers' scripts/convert_vae_diff_to_onnx.py shape); the manifest
is the service's own pydantic model, so training cannot write a contract the service does not read.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from service.manifest import (
    Component,
    ImageSpec,
    LatentSpec,
    Manifest,
    SamplerSpec,
    TensorSpec,
    sha256_of,
    write_manifest,
)
from training.diffusion import make_training_scheduler
from training.pipeline import SRPipeline

logger = logging.getLogger(__name__)

OPSET = 17


class _Decoder(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, hr_latent: Tensor) -> Tensor:
        return self.vae.decode(hr_latent).clamp(-1.0, 1.0)


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
) -> Manifest:
    """Exports the EMA weights; ``steps`` is the supported (min, default, max) sampling step count."""
    pipeline = SRPipeline.from_checkpoint(checkpoint)
    config = pipeline.config
    if config.diffusion.eta != 0.0:
        raise ValueError("the appliance samples with deterministic DDIM (eta = 0); this run was configured otherwise")
    latent_size = config.data.hr_size // pipeline.vae.downsample_factor
    latent_channels = pipeline.vae.latent_channels
    lr_image = torch.zeros(1, 1, config.data.lr_size, config.data.lr_size)
    lr_latent = torch.zeros(1, latent_channels, latent_size, latent_size)
    timestep = torch.full((1,), 999.0)
    batch = {0: "batch"}
    signatures = {
        "encoder": (pipeline.condition_encoder, (lr_image,), ["lr_image"], ["lr_latent"]),
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

    minimum, default, maximum = steps
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
        ),
        provenance={"run_name": config.run_name, "training_step": pipeline.step, "checkpoint": checkpoint.name},
    )
    write_manifest(manifest, out_dir)
    return manifest
