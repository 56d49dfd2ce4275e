"""How another hospital's film differs before anyone downsamples it: processing, export and noise.

Hospitals acquire, process and export chest films differently: edge enhancement (unsharp masking) of various
radii and gains, local contrast equalisation, tone curves, the resolution a film had before the 256² HR was
made, JPEG export, detector noise. A model that saw one processing chain learns its texture as "the truth";
at a hospital with another it answers the wrong texture (issue 15 measured the gain over bicubic halving).

Each step here is a small named function on a ``B×1×H×W`` batch on the [-1, 1] scale with one parameter per
image. They change the HR, the film as that hospital would have stored it, so they run before the LR is made
from it (training/degradation.py): the pair stays a true pair. `draw_acquisition` draws which steps apply to
each image and with what strength from `AcquisitionConfig`'s ranges, all from one generator (seeded, so a
resumed run sees the same films); `apply_acquisition` applies them in the order a film meets them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from xraysr.training.config import AcquisitionConfig, Range

STEPS = ("resolution", "tone", "local_contrast", "unsharp", "noise", "jpeg")


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image (pixels), reflect-padded so film edges do not darken."""
    radius = int(np.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernels = torch.exp(-0.5 * (offsets[None] / sigma.to(images)[:, None]) ** 2)
    kernels = kernels / kernels.sum(1, keepdim=True)  # B × K
    batch, _, height, width = images.shape
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    # Grouped convolution: each image with its own kernel.
    rows = F.conv2d(padded.transpose(0, 1), kernels[:, None, None, :], groups=batch)
    blurred = F.conv2d(rows, kernels[:, None, :, None], groups=batch)
    return blurred.transpose(0, 1)[..., :height, :width]


def unsharp_mask(images: torch.Tensor, radius: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Edge enhancement as a processing station applies it: image + amount × (image − blur(image, radius))."""
    detail = images - gaussian_blur(images, radius)
    return (images + amount.view(-1, 1, 1, 1).to(images) * detail).clamp(-1, 1)


def local_contrast(images: torch.Tensor, gain: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Detail above a broad local mean scaled by 1 + gain: a smooth stand-in for CLAHE-like equalisation
    (gain > 0) and for a flatter, softer processing (gain < 0)."""
    mean = gaussian_blur(images, radius)
    return (mean + (1 + gain.view(-1, 1, 1, 1).to(images)) * (images - mean)).clamp(-1, 1)


def tone_curve(images: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """A power curve on the [0, 1] scale: another window or look-up table."""
    unit = ((images + 1) / 2).clamp(0, 1)
    return unit.pow(gamma.view(-1, 1, 1, 1).to(images)) * 2 - 1


def export_resolution(images: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """A film whose detail stopped at ``size`` px across before it was resampled to the HR grid: area down,
    bicubic up (per image, since sizes differ)."""
    height = images.shape[-1]
    out = images.clone()
    for index, native in enumerate(size.round().to(torch.int64).tolist()):
        if native < height:
            small = F.interpolate(images[index : index + 1], size=(native, native), mode="area")
            up = F.interpolate(small, size=(height, height), mode="bicubic", align_corners=False)
            out[index] = up[0].clamp(-1, 1)
    return out


def jpeg(images: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """A JPEG export and re-import (Pillow's baseline codec, 8-bit)."""
    out = images.clone()
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    for index, level in enumerate(quality.round().to(torch.int64).tolist()):
        buffer = io.BytesIO()
        Image.fromarray(pixels[index, 0]).save(buffer, format="JPEG", quality=int(level))
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"), dtype=np.float32)
        out[index, 0] = torch.from_numpy(decoded / 127.5 - 1.0).to(images)
    return out


def add_noise(images: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise of ``sigma`` grey levels (8-bit), from the seeded generator."""
    noise = torch.randn(images.shape, generator=generator).to(images)
    return (images + noise * (sigma.view(-1, 1, 1, 1).to(images) / 127.5)).clamp(-1, 1)


@dataclass(frozen=True)
class AcquisitionDraw:
    """Per image: whether each step applies (``applied[step]``, bool B) and its parameters (float B)."""

    applied: dict[str, torch.Tensor]
    parameters: dict[str, torch.Tensor]
    noise_seed: int

    def describe(self, index: int) -> dict[str, float]:
        """What image ``index`` went through, for reports: ``{parameter: value}`` of the applied steps."""
        return {
            name: round(float(value[index]), 3)
            for name, value in self.parameters.items()
            if bool(self.applied[name.split(":")[0]][index])
        }


def _uniform(count: int, span: Range, generator: torch.Generator) -> torch.Tensor:
    return span.low + (span.high - span.low) * torch.rand(count, generator=generator, dtype=torch.float64)


def draw_acquisition(batch_size: int, config: AcquisitionConfig, generator: torch.Generator) -> AcquisitionDraw:
    # Every draw happens whatever the probabilities, so changing one step's probability does not reshuffle
    # the numbers the others receive.
    probabilities = {
        "resolution": config.resolution_probability,
        "tone": config.tone_probability,
        "local_contrast": config.local_contrast_probability,
        "unsharp": config.unsharp_probability,
        "noise": config.noise_probability,
        "jpeg": config.jpeg_probability,
    }
    applied = {step: torch.rand(batch_size, generator=generator) < probabilities[step] for step in STEPS}
    parameters = {
        "resolution:size": _uniform(batch_size, config.resolution_size, generator),
        "tone:gamma": _uniform(batch_size, config.tone_gamma, generator),
        "local_contrast:gain": _uniform(batch_size, config.local_contrast_gain, generator),
        "local_contrast:radius": _uniform(batch_size, config.local_contrast_radius, generator),
        "unsharp:radius": _uniform(batch_size, config.unsharp_radius, generator),
        "unsharp:amount": _uniform(batch_size, config.unsharp_amount, generator),
        "noise:sigma": _uniform(batch_size, config.noise_sigma, generator),
        "jpeg:quality": _uniform(batch_size, config.jpeg_quality, generator),
    }
    noise_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return AcquisitionDraw(applied, parameters, noise_seed)


def apply_acquisition(hr: torch.Tensor, draw: AcquisitionDraw) -> torch.Tensor:
    """The drawn steps on the HR batch, in the order a film meets them: native resolution, then the
    processing station's tone curve, equalisation and edge enhancement, then noise, then the JPEG export."""
    out = hr
    for step in STEPS:
        chosen = draw.applied[step].to(hr.device)
        if not bool(chosen.any()):
            continue
        images = out[chosen]
        pick = {
            name.split(":")[1]: value[chosen.cpu()] for name, value in draw.parameters.items() if name.startswith(step)
        }
        match step:
            case "resolution":
                images = export_resolution(images, pick["size"])
            case "tone":
                images = tone_curve(images, pick["gamma"])
            case "local_contrast":
                images = local_contrast(images, pick["gain"], pick["radius"])
            case "unsharp":
                images = unsharp_mask(images, pick["radius"], pick["amount"])
            case "noise":
                images = add_noise(images, pick["sigma"], torch.Generator().manual_seed(draw.noise_seed))
            case "jpeg":
                images = jpeg(images, pick["quality"])
        out = out.clone()
        out[chosen] = images.to(out.dtype)
    return out


def is_identity(config: AcquisitionConfig) -> bool:
    """True when no step can apply: a run without acquisition augmentation keeps its old batches."""
    return config == AcquisitionConfig()
