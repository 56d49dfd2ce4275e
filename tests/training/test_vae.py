"""training/vae.py: the CxrVAE codec, its KL, its weight loading, and frozen pretrained diffusers VAEs.

The diffusers models are tiny, built here and saved with ``save_pretrained`` to a tmp folder, so the
loading path is exercised exactly as with a real model folder and nothing is ever downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from xraysr.training.config import CxrVAEConfig, DiffusersVAEConfig
from xraysr.training.vae import (
    CxrVAE,
    PretrainedVAE,
    build_cxr_vae,
    build_frozen_vae,
    kl_divergence,
    load_cxr_vae,
    load_pretrained_vae,
)

# Narrow enough to run in milliseconds on a CPU; the identity property does not depend on the width.
SMALL_VAE = CxrVAEConfig(latent_channels=16, hidden_channels=8, num_res_blocks=1)


def _images(batch: int, size: int = 256, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, size, size, generator=generator) * 2.0 - 1.0


def _randomised_state(vae: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A state dict unlike the freshly initialised one, so a load that silently did nothing is caught."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(tensor.shape, generator=generator) for name, tensor in vae.state_dict().items()}


def _assert_state_equal(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name


# --- CxrVAE ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2])
def test_cxr_vae_with_f_squared_channels_is_an_exact_identity_at_init(batch: int) -> None:
    torch.manual_seed(0)
    vae = build_cxr_vae(SMALL_VAE)
    images = _images(batch)
    with torch.no_grad():
        latent = vae.encode(images)
        reconstruction = vae.decode(latent)
    assert vae.identity_skip is True
    assert latent.shape == (batch, 16, 64, 64)
    # The latent is the space-to-depth of the image itself: latent[:, i*4 + j] == image[:, 0, i::4, j::4].
    assert torch.equal(latent[:, 0], images[:, 0, 0::4, 0::4])
    assert torch.equal(latent[:, 4 * 2 + 3], images[:, 0, 2::4, 3::4])
    assert reconstruction.shape == images.shape
    assert torch.equal(reconstruction, images)


def test_cxr_vae_identity_init_has_log_variance_minus_ten() -> None:
    vae = build_cxr_vae(SMALL_VAE)
    with torch.no_grad():
        mean, log_variance = vae.encode_distribution(_images(1))
    assert mean.shape == log_variance.shape == (1, 16, 64, 64)
    assert torch.equal(log_variance, torch.full_like(log_variance, -10.0))


def test_cxr_vae_with_eight_channels_has_no_identity_skip() -> None:
    torch.manual_seed(0)
    vae = CxrVAE(latent_channels=8, hidden_channels=8, num_res_blocks=1)
    images = _images(2)
    with torch.no_grad():
        latent = vae.encode(images)
        reconstruction = vae.decode(latent)
    assert vae.identity_skip is False
    assert latent.shape == (2, 8, 64, 64)
    assert reconstruction.shape == (2, 1, 256, 256)
    # Without the skip the heads keep their random init: the untrained codec is not an identity.
    assert not torch.allclose(reconstruction, images, atol=1e-3)
    assert vae.encoder[-1].weight.abs().sum() > 0


def test_cxr_vae_forward_returns_reconstruction_mean_and_log_variance() -> None:
    vae = build_cxr_vae(SMALL_VAE)
    images = _images(2)
    with torch.no_grad():
        reconstruction, mean, log_variance = vae(images, generator=torch.Generator().manual_seed(3))
        expected_mean, expected_log_variance = vae.encode_distribution(images)
    assert reconstruction.shape == (2, 1, 256, 256)
    assert mean.shape == log_variance.shape == (2, 16, 64, 64)
    assert torch.equal(mean, expected_mean)
    assert torch.equal(log_variance, expected_log_variance)
    # std = exp(-5) ≈ 0.0067 at init: the sample is the image plus that much noise, through the identity decoder.
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    expected = vae.decode(mean + math.exp(-5.0) * noise)
    torch.testing.assert_close(reconstruction, expected, rtol=0, atol=1e-6)
    assert not torch.equal(reconstruction, images)


def test_cxr_vae_forward_reparameterisation_follows_the_generator() -> None:
    vae = build_cxr_vae(SMALL_VAE)
    images = _images(1)
    with torch.no_grad():
        first = vae(images, generator=torch.Generator().manual_seed(7))[0]
        second = vae(images, generator=torch.Generator().manual_seed(7))[0]
        other = vae(images, generator=torch.Generator().manual_seed(8))[0]
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


# --- kl_divergence --------------------------------------------------------------------------------------


def test_kl_divergence_of_the_prior_is_zero() -> None:
    zeros = torch.zeros(2, 16, 4, 4)
    assert kl_divergence(zeros, zeros).item() == 0.0


def test_kl_divergence_matches_hand_computation() -> None:
    mean = torch.tensor([1.0, 2.0, 0.0, -0.5])
    log_variance = torch.tensor([0.0, math.log(2.0), -1.0, 1.0])
    # 0.5 * (mu² + sigma² - 1 - log sigma²) per element, then the per-element mean.
    per_element = [
        0.5 * (1.0 + 1.0 - 1.0 - 0.0),
        0.5 * (4.0 + 2.0 - 1.0 - math.log(2.0)),
        0.5 * (0.0 + math.exp(-1.0) - 1.0 + 1.0),
        0.5 * (0.25 + math.exp(1.0) - 1.0 - 1.0),
    ]
    expected = sum(per_element) / 4
    assert expected == pytest.approx(0.8303768, abs=1e-7)
    assert kl_divergence(mean, log_variance).item() == pytest.approx(expected, rel=1e-6)


# --- load_cxr_vae ---------------------------------------------------------------------------------------


def test_load_cxr_vae_round_trips_a_bare_state_dict(tmp_path: Path) -> None:
    state = _randomised_state(build_cxr_vae(SMALL_VAE), seed=1)
    path = tmp_path / "bare.pt"
    torch.save(state, path)
    config = SMALL_VAE.model_copy(update={"checkpoint": path})
    _assert_state_equal(load_cxr_vae(config), state)


def test_load_cxr_vae_takes_the_ema_weights_of_a_train_vae_checkpoint(tmp_path: Path) -> None:
    template = build_cxr_vae(SMALL_VAE)
    ema_state = _randomised_state(template, seed=2)
    raw_state = _randomised_state(template, seed=3)
    path = tmp_path / "step_0000400.pt"
    # The layout train_vae.py writes: raw weights, EMA weights and bookkeeping side by side.
    torch.save({"step": 400, "vae": raw_state, "ema": ema_state, "config": {"run_name": "vae_cxr"}}, path)
    # An explicit weights argument overrides the config's (absent) checkpoint.
    _assert_state_equal(load_cxr_vae(SMALL_VAE, weights=path), ema_state)


def test_load_cxr_vae_without_weights_raises() -> None:
    with pytest.raises(ValueError, match="no CxrVAE weights given: set vae.checkpoint"):
        load_cxr_vae(SMALL_VAE)


# --- pretrained diffusers VAEs, offline -----------------------------------------------------------------


def _save_tiny_kl(folder: Path) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    ).save_pretrained(folder)


def _save_tiny_taesd(folder: Path) -> None:
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    # TAESD's shape (4 levels, f=8) at width 8 and one block a level.
    AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    ).save_pretrained(folder)


# architecture, folder writer, latent channels, downsample factor, scaling factor written by diffusers
PRETRAINED_CASES = [
    pytest.param("autoencoder_kl", _save_tiny_kl, 4, 2, 0.18215, id="autoencoder_kl"),
    pytest.param("autoencoder_tiny", _save_tiny_taesd, 4, 8, 1.0, id="autoencoder_tiny"),
]


@pytest.fixture(scope="module")
def pretrained_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrained")
    folders = {}
    for case in PRETRAINED_CASES:
        architecture, save = case.values[0], case.values[1]
        save(root / architecture)
        folders[architecture] = root / architecture
    return folders


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize(("architecture", "save", "channels", "factor", "scaling"), PRETRAINED_CASES)
def test_pretrained_vae_loads_offline_as_a_frozen_one_channel_codec(
    pretrained_folders: dict[str, Path], architecture: str, save: object, channels: int, factor: int, scaling: float
) -> None:
    config = DiffusersVAEConfig(model=str(pretrained_folders[architecture]), architecture=architecture)
    vae = load_pretrained_vae(config)
    assert isinstance(vae, PretrainedVAE)
    assert not any(parameter.requires_grad for parameter in vae.parameters())
    assert vae.model.training is False
    assert vae.latent_channels == channels
    assert vae.downsample_factor == factor
    assert vae.scaling_factor == pytest.approx(scaling)

    images = _images(2, size=32, seed=5)
    with torch.no_grad():
        latent = vae.encode(images)
        again = vae.encode(images)
        decoded = vae.decode(latent)
    assert latent.shape == (2, channels, 32 // factor, 32 // factor)
    assert torch.equal(latent, again)
    assert decoded.shape == (2, 1, 32, 32)


@pytest.mark.usefixtures("offline")
def test_pretrained_kl_latent_is_the_scaled_posterior_mean_of_the_rgb_image(
    pretrained_folders: dict[str, Path],
) -> None:
    vae = load_pretrained_vae(DiffusersVAEConfig(model=str(pretrained_folders["autoencoder_kl"])))
    images = _images(2, size=32, seed=6)
    rgb = images.repeat(1, 3, 1, 1)
    with torch.no_grad():
        latent = vae.encode(images)
        expected = vae.model.encode(rgb).latent_dist.mean * vae.model.config.scaling_factor
        decoded = vae.decode(latent)
        expected_decoded = vae.model.decode(latent / vae.model.config.scaling_factor).sample.mean(dim=1, keepdim=True)
    torch.testing.assert_close(latent, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(decoded, expected_decoded, rtol=0, atol=1e-6)


@pytest.mark.usefixtures("offline")
def test_pretrained_tiny_latent_is_the_encoder_output_of_the_rgb_image(pretrained_folders: dict[str, Path]) -> None:
    config = DiffusersVAEConfig(model=str(pretrained_folders["autoencoder_tiny"]), architecture="autoencoder_tiny")
    vae = load_pretrained_vae(config)
    images = _images(1, size=32, seed=7)
    with torch.no_grad():
        latent = vae.encode(images)
        expected = vae.model.encode(images.repeat(1, 3, 1, 1)).latents
    torch.testing.assert_close(latent, expected, rtol=0, atol=1e-6)


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize("model", ["missing-folder", "xraysr-tests/no-such-vae"])
def test_pretrained_vae_that_is_not_on_disk_is_never_downloaded(tmp_path: Path, model: str) -> None:
    name = str(tmp_path / model) if model == "missing-folder" else model
    with pytest.raises(FileNotFoundError, match="xraysr never downloads weights") as raised:
        load_pretrained_vae(DiffusersVAEConfig(model=name))
    assert repr(name) in str(raised.value)
    assert "autoencoder_kl" in str(raised.value)


@pytest.mark.usefixtures("offline")
def test_pretrained_vae_of_the_wrong_architecture_is_refused(pretrained_folders: dict[str, Path]) -> None:
    config = DiffusersVAEConfig(model=str(pretrained_folders["autoencoder_kl"]), architecture="autoencoder_tiny")
    with pytest.raises(ValueError, match="holds a AutoencoderKL, but vae.architecture is 'autoencoder_tiny'"):
        load_pretrained_vae(config)
    config = DiffusersVAEConfig(model=str(pretrained_folders["autoencoder_tiny"]), architecture="autoencoder_kl")
    with pytest.raises(ValueError, match="holds a AutoencoderTiny, but vae.architecture is 'autoencoder_kl'"):
        load_pretrained_vae(config)


# --- build_frozen_vae -----------------------------------------------------------------------------------


def test_build_frozen_vae_for_a_cxr_checkpoint(tmp_path: Path) -> None:
    state = _randomised_state(build_cxr_vae(SMALL_VAE), seed=4)
    path = tmp_path / "vae.pt"
    torch.save({"ema": state}, path)
    vae = build_frozen_vae(SMALL_VAE.model_copy(update={"checkpoint": path}))
    assert isinstance(vae, CxrVAE)
    assert vae.training is False
    assert sum(parameter.numel() for parameter in vae.parameters() if parameter.requires_grad) == 0
    _assert_state_equal(vae, state)


@pytest.mark.usefixtures("offline")
def test_build_frozen_vae_for_a_diffusers_model(pretrained_folders: dict[str, Path]) -> None:
    vae = build_frozen_vae(DiffusersVAEConfig(model=str(pretrained_folders["autoencoder_kl"])))
    assert isinstance(vae, PretrainedVAE)
    assert vae.training is False
    assert sum(parameter.numel() for parameter in vae.parameters()) > 0
    assert sum(parameter.numel() for parameter in vae.parameters() if parameter.requires_grad) == 0


def test_build_frozen_vae_for_cxr_without_a_checkpoint_raises() -> None:
    with pytest.raises(ValueError, match="no CxrVAE weights given"):
        build_frozen_vae(SMALL_VAE)
