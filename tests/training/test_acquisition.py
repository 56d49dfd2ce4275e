"""Acquisition augmentation: each step does what a hospital's processing does, per image, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xraysr.training.acquisition import (
    STEPS,
    add_noise,
    apply_acquisition,
    draw_acquisition,
    export_resolution,
    gaussian_blur,
    is_identity,
    jpeg,
    local_contrast,
    tone_curve,
    unsharp_mask,
)
from xraysr.training.config import AcquisitionConfig, AugmentConfig, Range


def film(batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A film-like batch on [-1, 1]: a smooth body, rib-like stripes and fine mottle."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.linspace(-1, 1, 256)
    body = 0.5 * torch.exp(-(grid[None, :] ** 2 + grid[:, None] ** 2) * 2)
    ribs = 0.15 * torch.sin(grid[:, None] * 40)
    mottle = 0.03 * torch.randn(batch, 1, 256, 256, generator=generator)
    return ((body + ribs - 0.2)[None, None] + mottle).clamp(-1, 1)


def gradient_energy(images: torch.Tensor) -> float:
    return float((images[..., 1:, :] - images[..., :-1, :]).abs().mean())


def test_blur_keeps_a_flat_image_flat_and_smooths_mottle() -> None:
    flat = torch.full((2, 1, 64, 64), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, torch.tensor([1.0, 5.0])), flat)
    images = film()
    assert gradient_energy(gaussian_blur(images, torch.tensor([2.0, 2.0]))) < 0.6 * gradient_energy(images)


def test_each_step_moves_the_film_the_way_its_processing_does() -> None:
    images = film()
    one = torch.ones(2)
    assert gradient_energy(unsharp_mask(images, 1.0 * one, 1.5 * one)) > 1.3 * gradient_energy(images)
    assert gradient_energy(export_resolution(images, 128 * one)) < 0.8 * gradient_energy(images)
    detail = images - gaussian_blur(images, 16 * one)
    boosted = local_contrast(images, 0.8 * one, 16 * one)
    assert float((boosted - gaussian_blur(boosted, 16 * one)).std()) > 1.5 * float(detail.std())
    # gamma > 1 darkens mid-greys on [0, 1]; the ends stay where they are.
    ends = torch.tensor([[-1.0, 1.0]]).view(1, 1, 1, 2)
    torch.testing.assert_close(tone_curve(ends, torch.tensor([1.5])), ends)
    assert float(tone_curve(images, 1.5 * one).mean()) < float(images.mean())
    noisy = add_noise(torch.zeros(2, 1, 256, 256), 4.0 * one, torch.Generator().manual_seed(1))
    assert abs(float(noisy.std()) * 127.5 - 4.0) < 0.1
    compressed = jpeg(images, torch.tensor([30.0, 95.0]))
    errors = [float((compressed[i] - images[i]).abs().mean()) * 127.5 for i in range(2)]
    assert errors[0] > 2 * errors[1] > 0  # quality 30 loses more than 95, and 95 is not lossless


def test_draws_are_reproducible_and_only_the_chosen_images_change() -> None:
    config = AcquisitionConfig(**{f"{step}_probability": 0.15 for step in STEPS})
    first = draw_acquisition(16, config, torch.Generator().manual_seed(3))
    again = draw_acquisition(16, config, torch.Generator().manual_seed(3))
    images = film(16)
    out = apply_acquisition(images, first)
    torch.testing.assert_close(out, apply_acquisition(images, again), rtol=0, atol=0)
    touched = torch.stack([first.applied[step] for step in STEPS]).any(0)
    assert 0 < int(touched.sum()) < 16
    for index in range(16):
        changed = not torch.equal(out[index], images[index])
        assert changed == bool(touched[index]), index
        assert bool(first.describe(index)) == bool(touched[index])
    assert out.min() >= -1 and out.max() <= 1


def test_changing_one_probability_leaves_the_other_draws_alone() -> None:
    base = AcquisitionConfig(unsharp_probability=0.5, noise_probability=0.5)
    other = AcquisitionConfig(unsharp_probability=0.5, noise_probability=0.5, jpeg_probability=1.0)
    a = draw_acquisition(16, base, torch.Generator().manual_seed(0))
    b = draw_acquisition(16, other, torch.Generator().manual_seed(0))
    for name in a.parameters:
        torch.testing.assert_close(a.parameters[name], b.parameters[name])
    assert torch.equal(a.applied["unsharp"], b.applied["unsharp"]) and not bool(a.applied["jpeg"].any())


def test_no_probability_is_the_identity_and_the_config_refuses_nonsense() -> None:
    assert is_identity(AcquisitionConfig()) and not is_identity(AcquisitionConfig(noise_probability=0.1))
    images = film()
    draw = draw_acquisition(2, AcquisitionConfig(), torch.Generator().manual_seed(0))
    assert torch.equal(apply_acquisition(images, draw), images)
    with pytest.raises(ValueError, match="above high"):
        Range(low=2, high=1)
    with pytest.raises(ValueError, match="jpeg_quality"):
        AcquisitionConfig(jpeg_quality=Range(low=0, high=90))
    with pytest.raises(ValueError, match="resolution_size"):
        AcquisitionConfig(resolution_size=Range(low=100, high=300))
    with pytest.raises(ValueError, match="degrade_augmented_hr"):
        AugmentConfig(lr_source="augment_lr", acquisition=AcquisitionConfig(noise_probability=0.2))


def test_the_training_step_makes_its_lr_from_the_processed_film() -> None:
    """What train.py does: the acquisition on the HR, then the LR degraded from it, so the pair stays a pair."""
    from xraysr.training.degradation import degrade

    images = film(4)
    draw = draw_acquisition(4, AcquisitionConfig(unsharp_probability=1.0), torch.Generator().manual_seed(0))
    processed = apply_acquisition(images, draw)
    lr = degrade(processed, 64, "area")
    expected = ((torch.nn.functional.adaptive_avg_pool2d(processed, 64).clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    np.testing.assert_allclose(lr.numpy(), expected.numpy(), atol=1e-6)
