"""training/unet_lite.py: shapes, the zero head, the timestep embedding, and the cost figures it reports."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from xraysr.training.config import UNetConfig
from xraysr.training.unet_lite import UNetLite, build_unet, flops_per_step, parameter_count, timestep_embedding

LATENT_CHANNELS = 4
# A tiny config whose parameters and FLOPs are counted by hand below.
TINY = dict(base_channels=8, channel_multipliers=(1, 2), num_res_blocks=1, time_embed_dim=16)


def _tiny_unet(**overrides: object) -> UNetLite:
    torch.manual_seed(0)
    return UNetLite(LATENT_CHANNELS, LATENT_CHANNELS, **{**TINY, **overrides})


def _latents(batch: int, size: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, LATENT_CHANNELS, size, size, generator=torch.Generator().manual_seed(seed))


def _randomise_head(model: UNetLite) -> UNetLite:
    """Gives the zero-initialised head weights, so the output shows what the body computes."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.head[-1].weight.copy_(torch.randn(model.head[-1].weight.shape, generator=generator) * 0.1)
    return model


# --- shapes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel_multipliers", [(1, 2), (1, 2, 4)])
@pytest.mark.parametrize("num_res_blocks", [1, 2])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_has_the_noisy_latent_shape(
    channel_multipliers: tuple[int, ...], num_res_blocks: int, batch: int
) -> None:
    model = _randomise_head(_tiny_unet(channel_multipliers=channel_multipliers, num_res_blocks=num_res_blocks))
    noisy = _latents(batch, 16, seed=0)
    with torch.no_grad():
        prediction = model(noisy, torch.full((batch,), 250), _latents(batch, 16, seed=1))
    assert prediction.shape == (batch, LATENT_CHANNELS, 16, 16)
    assert prediction.abs().sum() > 0


def test_a_zero_dimensional_timestep_is_broadcast_over_the_batch() -> None:
    model = _randomise_head(_tiny_unet())
    noisy, lr_latent = _latents(3, 16, seed=0), _latents(3, 16, seed=1)
    with torch.no_grad():
        scalar = model(noisy, torch.tensor(250), lr_latent)
        per_image = model(noisy, torch.tensor([250, 250, 250]), lr_latent)
    assert scalar.shape == (3, LATENT_CHANNELS, 16, 16)
    assert torch.equal(scalar, per_image)


def test_build_unet_conditions_on_a_latent_of_the_same_channels() -> None:
    config = UNetConfig(base_channels=8, channel_multipliers=(1, 2), num_res_blocks=2, time_embed_dim=16)
    model = build_unet(config, latent_channels=16)
    assert (model.latent_channels, model.cond_channels, model.base_channels) == (16, 16, 8)
    assert model.stem.in_channels == 32
    assert model.head[-1].out_channels == 16
    assert [len(blocks) for blocks in model.down_blocks] == [2, 2]


# --- the zero head and the first optimiser step ---------------------------------------------------------


def test_untrained_output_is_exactly_zero() -> None:
    model = _tiny_unet(channel_multipliers=(1, 2, 4))
    with torch.no_grad():
        prediction = model(_latents(2, 16, seed=0), torch.tensor([0, 999]), _latents(2, 16, seed=1))
    assert torch.equal(prediction, torch.zeros_like(prediction))


def test_one_optimiser_step_makes_the_output_depend_on_timestep_and_lr_latent() -> None:
    model = _tiny_unet()
    noisy, lr_latent, target = _latents(2, 16, seed=0), _latents(2, 16, seed=1), _latents(2, 16, seed=2)
    timesteps = torch.tensor([100, 100])
    body_before = {name: tensor.clone() for name, tensor in model.state_dict().items() if not name.startswith("head")}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.mse_loss(model(noisy, timesteps, lr_latent), target)
    loss.backward()
    optimizer.step()

    with torch.no_grad():
        after = model(noisy, timesteps, lr_latent)
        other_timestep = model(noisy, torch.tensor([900, 900]), lr_latent)
        other_condition = model(noisy, timesteps, _latents(2, 16, seed=3))
        loss_after = nn.functional.mse_loss(after, target)
    assert not torch.equal(after, torch.zeros_like(after))
    # The zero head blocks every gradient behind it: the first step moves the head alone.
    for name, tensor in body_before.items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert not torch.allclose(after, other_timestep, atol=1e-6)
    assert not torch.allclose(after, other_condition, atol=1e-6)
    assert loss_after < loss


# --- timestep_embedding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [8, 32, 128])
def test_timestep_embedding_at_zero_is_cosines_of_one_then_sines_of_zero(dim: int) -> None:
    embedding = timestep_embedding(torch.tensor([0, 0]), dim)
    expected = torch.tensor([1.0] * (dim // 2) + [0.0] * (dim // 2))
    assert embedding.shape == (2, dim)
    assert torch.equal(embedding, expected.expand(2, dim))


def test_timestep_embedding_values() -> None:
    # half = 2: frequencies exp(-ln(1e4) * [0, 1] / 2) = [1, 1e-2]
    embedding = timestep_embedding(torch.tensor([1.0, 250.0]), 4)
    expected = torch.tensor(
        [
            [math.cos(1.0), math.cos(0.01), math.sin(1.0), math.sin(0.01)],
            [math.cos(250.0), math.cos(2.5), math.sin(250.0), math.sin(2.5)],
        ]
    )
    torch.testing.assert_close(embedding, expected, rtol=0, atol=1e-5)


def test_timestep_embedding_pads_an_odd_dimension_with_zero() -> None:
    embedding = timestep_embedding(torch.tensor([0, 3]), 7)
    assert embedding.shape == (2, 7)
    assert torch.equal(embedding[0], torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]))
    assert embedding[1, 6].item() == 0.0
    torch.testing.assert_close(embedding[1, :6], timestep_embedding(torch.tensor([3]), 6)[0], rtol=0, atol=0)


# --- parameter_count and flops_per_step, against arithmetic done here -----------------------------------


def _conv_parameters(cin: int, cout: int, kernel: int) -> int:
    return cin * cout * kernel * kernel + cout


def _res_block_parameters(cin: int, cout: int, embed: int) -> int:
    norms = 2 * cin + 2 * cout
    skip = _conv_parameters(cin, cout, 1) if cin != cout else 0
    return norms + _conv_parameters(cin, cout, 3) + (embed * cout + cout) + _conv_parameters(cout, cout, 3) + skip


def test_parameter_count_of_the_tiny_config() -> None:
    # latent 4 + cond 4, widths [8, 16], one block a level, time embedding 16.
    expected = sum(
        [
            (8 * 16 + 16) + (16 * 16 + 16),  # time MLP: base_channels → 16 → 16
            _conv_parameters(8, 8, 3),  # stem (noisy ⊕ lr latent)
            _res_block_parameters(8, 8, 16) + _conv_parameters(8, 8, 3),  # level 0 and its downsampler
            _res_block_parameters(8, 16, 16),  # level 1
            2 * _res_block_parameters(16, 16, 16),  # middle
            _res_block_parameters(16 + 16, 16, 16) + _conv_parameters(16, 8, 3),  # up level 1, upsampler
            _res_block_parameters(8 + 8, 8, 16),  # up level 0
            2 * 8 + _conv_parameters(8, LATENT_CHANNELS, 3),  # head: GroupNorm, conv
        ]
    )
    assert expected == 28196
    assert parameter_count(_tiny_unet()) == expected


def _conv_flops(cin: int, cout: int, kernel: int, side: int) -> int:
    # FlopCounterMode counts a multiply-add as 2 and leaves the bias out.
    return 2 * cin * cout * kernel * kernel * side * side


def _tiny_conv_flops(side: int) -> int:
    half = side // 2
    return sum(
        [
            _conv_flops(8, 8, 3, side),  # stem
            2 * _conv_flops(8, 8, 3, side),  # level 0 block
            _conv_flops(8, 8, 3, half),  # stride-2 downsampler, counted at its output size
            _conv_flops(8, 16, 3, half) + _conv_flops(16, 16, 3, half) + _conv_flops(8, 16, 1, half),  # level 1
            4 * _conv_flops(16, 16, 3, half),  # middle
            _conv_flops(32, 16, 3, half) + _conv_flops(16, 16, 3, half) + _conv_flops(32, 16, 1, half),  # up 1
            _conv_flops(16, 8, 3, side),  # upsampler conv after nearest ×2
            _conv_flops(16, 8, 3, side) + _conv_flops(8, 8, 3, side) + _conv_flops(16, 8, 1, side),  # up 0
            _conv_flops(8, LATENT_CHANNELS, 3, side),  # head
        ]
    )


# Time MLP (8→16, 16→16) and the six ResBlocks' embedding projections (16 → 8,16,16,16,16,8): size-independent.
TINY_LINEAR_FLOPS = 2 * (8 * 16 + 16 * 16) + 2 * 16 * (8 + 16 + 16 + 16 + 16 + 8)


@pytest.mark.parametrize("side", [8, 16])
def test_flops_per_step_equals_convolution_arithmetic(side: int) -> None:
    assert TINY_LINEAR_FLOPS == 3328
    assert flops_per_step(_tiny_unet(), side) == _tiny_conv_flops(side) + TINY_LINEAR_FLOPS


def test_flops_per_step_grows_with_the_latent_area() -> None:
    model = _tiny_unet()
    small, large = flops_per_step(model, 16), flops_per_step(model, 32)
    assert (small, large) == (5_238_016, 20_942_080)
    # Convolutions scale with the area (4× for 2× side); only the small linear layers do not.
    assert large - 4 * small == -3 * TINY_LINEAR_FLOPS
    assert large / small == pytest.approx(4.0, rel=0.01)


def test_flops_per_step_leaves_the_model_unchanged() -> None:
    model = _randomise_head(_tiny_unet())
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    flops_per_step(model, 8)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
