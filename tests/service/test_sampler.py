"""service/sampler.py: numpy DDIM against diffusers' DDIMScheduler, the reference the model was trained with."""

from __future__ import annotations

import numpy as np
import pytest

from xraysr.service.manifest import SamplerSpec
from xraysr.service.sampler import SEED_MAX, DDIMSampler, ddim_step, initial_noise, sample_seeds

torch = pytest.importorskip("torch", reason="the reference scheduler comes with the train extra")
diffusers = pytest.importorskip("diffusers", reason="the reference scheduler comes with the train extra")


def _spec(prediction_type: str = "epsilon", beta_schedule: str = "linear") -> SamplerSpec:
    from xraysr.training.config import DiffusionConfig
    from xraysr.training.diffusion import make_training_scheduler

    config = DiffusionConfig(beta_schedule=beta_schedule, prediction_type=prediction_type)
    alphas = make_training_scheduler(config).alphas_cumprod
    return SamplerSpec(
        prediction_type=prediction_type,
        num_train_timesteps=1000,
        alphas_cumprod=tuple(float(a) for a in alphas),
        min_steps=1,
        default_steps=25,
        max_steps=1000,
    )


def test_trailing_timesteps_are_pinned() -> None:
    sampler = DDIMSampler(_spec())
    assert sampler.set_timesteps(5).tolist() == [999, 799, 599, 399, 199]
    assert sampler.set_timesteps(25)[:3].tolist() == [999, 959, 919]
    assert sampler.set_timesteps(25)[-1] == 39


@pytest.mark.parametrize("steps", [5, 25, 30])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_matches_diffusers_ddim_trailing(prediction_type: str, steps: int) -> None:
    from xraysr.training.config import DiffusionConfig
    from xraysr.training.diffusion import make_sampling_scheduler

    reference = make_sampling_scheduler(DiffusionConfig(prediction_type=prediction_type), "ddim")
    reference.set_timesteps(steps)
    sampler = DDIMSampler(_spec(prediction_type))
    timesteps = sampler.set_timesteps(steps)
    assert timesteps.tolist() == reference.timesteps.tolist()

    rng = np.random.default_rng(0)
    sample = initial_noise((1, 4, 8, 8), seed=1)
    reference_sample = torch.from_numpy(sample.copy())
    for timestep in timesteps:
        # A stand-in model output that depends on the sample, so errors would compound across steps.
        output = (0.3 * sample + 0.1 * rng.standard_normal(sample.shape)).astype(np.float32)
        sample = sampler.step(output, int(timestep), sample)
        reference_sample = reference.step(
            torch.from_numpy(output), int(timestep), reference_sample, eta=0.0
        ).prev_sample
    np.testing.assert_allclose(sample, reference_sample.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("inputs", ["numpy", "torch", "torch, one alpha per batch item"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_step_is_diffusers_ddim_step(prediction_type: str, inputs: str) -> None:
    """The one DDIM update (the service's loop, training's floored loop, the traced step graph) against
    ``DDIMScheduler.step`` with eta = 0 on the project's sampling scheduler, at each step of a 5-step trailing
    schedule, the last one (199 → alpha = 1) included. The third case feeds the alphas as the step graph does."""
    from xraysr.training.config import DiffusionConfig
    from xraysr.training.diffusion import make_sampling_scheduler

    reference = make_sampling_scheduler(DiffusionConfig(prediction_type=prediction_type), "ddim")
    reference.set_timesteps(5)
    assert reference.timesteps.tolist() == [999, 799, 599, 399, 199]
    rng = np.random.default_rng(0)
    for timestep in reference.timesteps.tolist():
        previous = timestep - 1000 // 5
        alpha_t = reference.alphas_cumprod[timestep]
        alpha_prev = reference.alphas_cumprod[previous] if previous >= 0 else reference.final_alpha_cumprod
        model_output = rng.standard_normal((2, 4, 8, 8), dtype=np.float32)
        sample = rng.standard_normal((2, 4, 8, 8), dtype=np.float32)
        expected = reference.step(torch.from_numpy(model_output), timestep, torch.from_numpy(sample), eta=0.0)
        match inputs:
            case "numpy":
                result = ddim_step(model_output, sample, alpha_t.numpy(), alpha_prev.numpy(), prediction_type)
                assert isinstance(result, np.ndarray) and result.dtype == np.float32
            case "torch":
                result = ddim_step(
                    torch.from_numpy(model_output), torch.from_numpy(sample), alpha_t, alpha_prev, prediction_type
                )
                assert isinstance(result, torch.Tensor) and result.dtype == torch.float32
                result = result.numpy()
            case "torch, one alpha per batch item":
                per_item = [alpha.expand(2).reshape(-1, 1, 1, 1) for alpha in (alpha_t, alpha_prev)]
                result = ddim_step(
                    torch.from_numpy(model_output), torch.from_numpy(sample), *per_item, prediction_type
                ).numpy()
        np.testing.assert_allclose(result, expected.prev_sample.numpy(), rtol=1e-6, atol=1e-6)


def test_ddim_step_refuses_an_unknown_prediction_type() -> None:
    zeros = np.zeros((1, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="unknown prediction_type 'x0'"):
        ddim_step(zeros, zeros, 0.5, 1.0, "x0")


def test_step_before_set_timesteps_and_out_of_range_steps_raise() -> None:
    spec = _spec().model_copy(update={"min_steps": 10, "max_steps": 50})
    sampler = DDIMSampler(spec)
    with pytest.raises(ValueError, match="set_timesteps"):
        sampler.step(np.zeros((1, 1, 2, 2), np.float32), 999, np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"\[10, 50\], got 51"):
        sampler.set_timesteps(51)


def test_initial_noise_is_seeded() -> None:
    assert np.array_equal(initial_noise((2, 3), 5), initial_noise((2, 3), 5))
    assert not np.array_equal(initial_noise((2, 3), 5), initial_noise((2, 3), 6))
    assert initial_noise((2, 3), 5).dtype == np.float32


def test_sample_seeds_count_up_from_the_seed_and_wrap_past_the_largest() -> None:
    assert sample_seeds(5, 1) == [5]
    assert sample_seeds(5, 4) == [5, 6, 7, 8]
    assert sample_seeds(SEED_MAX - 1, 3) == [SEED_MAX - 1, SEED_MAX, 0]


def _floored_spec(final_timestep: int, prediction_type: str = "sample", max_steps: int = 50) -> SamplerSpec:
    return _spec(prediction_type).model_copy(
        update={"final_timestep": final_timestep, "max_steps": max_steps, "timestep_spacing": "floored"}
    )


@pytest.mark.parametrize("steps", [1, 20, 25, 30])
def test_floored_timesteps_end_at_the_final_timestep_whatever_the_step_count(steps: int) -> None:
    sampler = DDIMSampler(_floored_spec(200))
    timesteps = sampler.set_timesteps(steps).tolist()
    assert timesteps[0] == 999 and len(timesteps) == steps == len(set(timesteps))
    assert timesteps[-1] == (200 if steps > 1 else 999)
    assert timesteps == sorted(timesteps, reverse=True)
    # Each step goes to the next timestep of the list; the last one to alpha = 1, the x0 estimate itself.
    for timestep, following in zip(timesteps, timesteps[1:], strict=False):
        assert sampler.alphas(timestep)[1] == pytest.approx(sampler.alphas_cumprod[following])
    assert sampler.alphas(timesteps[-1])[1] == 1.0
    sample = initial_noise((1, 2, 4, 4), seed=0)
    prediction = np.full_like(sample, 0.25)
    np.testing.assert_allclose(sampler.step(prediction, timesteps[-1], sample), prediction, atol=1e-6)


def test_floored_sampler_matches_the_training_sides_torch_loop() -> None:
    from xraysr.training.config import DiffusionConfig
    from xraysr.training.diffusion import sample_latent

    config = DiffusionConfig(prediction_type="sample", final_timestep=300)
    sampler = DDIMSampler(_floored_spec(300))
    weights = np.linspace(0.2, 0.6, 4, dtype=np.float32)[None, :, None, None]
    condition = initial_noise((1, 4, 8, 8), seed=7)
    noise = initial_noise((1, 4, 8, 8), seed=1)

    def model(sample: np.ndarray, timestep: float) -> np.ndarray:
        # A stand-in that depends on the sample, the timestep and the condition, so errors would compound.
        return (weights * sample * (1 - timestep / 2000) + 0.1 * condition).astype(np.float32)

    sample = noise
    for timestep in sampler.set_timesteps(20):
        sample = sampler.step(model(sample, float(timestep)), int(timestep), sample)

    def denoiser(noisy, timesteps, lr_latent):  # type: ignore[no-untyped-def]
        return torch.from_numpy(model(noisy.numpy(), float(timesteps[0])))

    reference = sample_latent(
        denoiser, torch.zeros(1, 4, 8, 8), config, 1.0, 20, torch.Generator(), initial_noise=torch.from_numpy(noise)
    )
    np.testing.assert_allclose(sample, reference.numpy(), rtol=1e-4, atol=1e-5)


def test_a_final_timestep_that_leaves_no_room_for_max_steps_is_refused() -> None:
    floored = {**_spec().model_dump(), "timestep_spacing": "floored"}
    with pytest.raises(ValueError, match="do not fit"):
        SamplerSpec.model_validate({**floored, "final_timestep": 990, "max_steps": 50})
    with pytest.raises(ValueError, match="floored goes with a final_timestep"):
        SamplerSpec.model_validate({**_spec().model_dump(), "final_timestep": 400})
    with pytest.raises(ValueError, match="floored goes with a final_timestep"):
        SamplerSpec.model_validate(floored)
    with pytest.raises(ValueError, match="cannot space"):
        from xraysr.service.sampler import floored_timesteps

        floored_timesteps(1000, 20, 990)
