"""The training loops on real X-rays with tiny models: learning, exact resume, the evaluation report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from xraysr.training.checkpoint import latest_checkpoint, load_checkpoint
from xraysr.training.config import SRTrainConfig, VAETrainConfig
from xraysr.training.data import PairDataset, to_uint8
from xraysr.training.degradation import make_lr
from xraysr.training.diffusion import ConditionEncoder, diffusion_sample, make_training_scheduler, regression_target
from xraysr.training.evaluate import evaluate
from xraysr.training.metrics import bicubic_upscale, psnr
from xraysr.training.train import train_sr
from xraysr.training.train_vae import train_vae
from xraysr.training.unet_lite import UNetLite
from xraysr.training.vae import CxrVAE

NO_AUGMENT = {"hflip_probability": 0.0, "max_rotation_degrees": 0.0, "brightness_jitter": 0.0}
TINY_UNET = {"base_channels": 8, "channel_multipliers": [1, 2], "num_res_blocks": 1, "time_embed_dim": 16}
TINY_VAE = {"kind": "cxr", "hidden_channels": 8, "num_res_blocks": 1}


@pytest.fixture(scope="module")
def identity_vae_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vae") / "vae.pt"
    torch.save(CxrVAE(hidden_channels=8, num_res_blocks=1).state_dict(), path)
    return path


def sr_config(root: Path, out: Path, vae_weights: Path, **overrides) -> SRTrainConfig:
    raw = {
        "run_name": "tiny_sr",
        "output_dir": str(out),
        "seed": 3,
        "data": {"root": str(root)},
        "augment": {"max_rotation_degrees": 10.0},
        "vae": {**TINY_VAE, "checkpoint": str(vae_weights)},
        "unet": TINY_UNET,
        "diffusion": {"sampling_steps": 2},
        "optim": {"batch_size": 2, "max_steps": 4, "warmup_steps": 1, "learning_rate": 1e-3},
        "schedule": {"checkpoint_every": 2, "validate_every": 4, "log_every": 1, "validation_images": 1},
    }
    raw.update(overrides)
    return SRTrainConfig.model_validate(raw)


def test_unet_lite_overfits_a_fixed_batch(tiny_cxr_root: Path, identity_vae_weights: Path) -> None:
    config = sr_config(tiny_cxr_root, tiny_cxr_root, identity_vae_weights)
    dataset = PairDataset(config.data, "train")
    lr, hr = (torch.stack(t) for t in zip(dataset[0], dataset[1], strict=False))
    vae = CxrVAE(hidden_channels=8, num_res_blocks=1).eval()
    lr_latent = ConditionEncoder(vae, 4)(lr).detach()
    sample = diffusion_sample(vae.encode(hr), lr_latent, config.diffusion, 10.0).detach()
    # A 16×16 crop of the 64×64 latent keeps memorising the noise within a CPU test's budget.
    sample, lr_latent = sample[..., 24:40, 24:40], lr_latent[..., 24:40, 24:40]
    scheduler = make_training_scheduler(config.diffusion)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(sample.shape, generator=generator)
    timesteps = torch.tensor([50, 700])
    noisy = scheduler.add_noise(sample, noise, timesteps)
    torch.manual_seed(0)
    unet = UNetLite(16, 16, base_channels=8, channel_multipliers=(1, 2), time_embed_dim=16)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        loss = F.mse_loss(unet(noisy, timesteps, lr_latent), regression_target(scheduler, sample, noise, timesteps))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(1.0, abs=0.05)  # a zero head predicts 0 against unit-variance noise
    # 150 Adam steps reach 0.25 of the start on one CPU and just over it on another (0.2513, AVX2 only).
    assert min(losses[-10:]) < 0.35 * losses[0]


def _assert_same_state(left: dict, right: dict) -> None:
    for key in ("unet", "ema"):
        assert left[key].keys() == right[key].keys()
        for name in left[key]:
            assert torch.equal(left[key][name], right[key][name]), f"{key}.{name} differs after resume"
    left_moments = [s["exp_avg"] for s in left["optimizer"]["state"].values()]
    right_moments = [s["exp_avg"] for s in right["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(left_moments, right_moments, strict=True))
    assert left["step"] == right["step"] and left["target_scale"] == right["target_scale"]


def test_train_sr_resume_reproduces_the_uninterrupted_run(
    tiny_cxr_root: Path, identity_vae_weights: Path, tmp_path: Path
) -> None:
    straight = sr_config(tiny_cxr_root, tmp_path / "a", identity_vae_weights)
    final = train_sr(straight, resume=None)
    assert final == straight.run_dir / "checkpoints" / "step_0000004.pt"
    assert (straight.run_dir / "config.yaml").is_file()
    assert list((straight.run_dir / "tensorboard").iterdir())
    sample_grid = np.array(Image.open(straight.run_dir / "samples" / "step_0000004.png"))
    assert sample_grid.shape == (256, 4 * 256 + 3 * 4)  # one validation image: LR | bicubic | SR | HR

    interrupted = sr_config(tiny_cxr_root, tmp_path / "b", identity_vae_weights)
    (interrupted.run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(straight.run_dir / "checkpoints" / "step_0000002.pt", interrupted.run_dir / "checkpoints")
    resumed = train_sr(interrupted, resume="auto")
    _assert_same_state(load_checkpoint(final), load_checkpoint(resumed))

    different_seed = sr_config(tiny_cxr_root, tmp_path / "c", identity_vae_weights, seed=4)
    other = load_checkpoint(train_sr(different_seed, resume=None))
    assert not torch.equal(other["unet"]["stem.weight"], load_checkpoint(final)["unet"]["stem.weight"])


def test_train_sr_refuses_to_overwrite_a_run(tiny_cxr_root: Path, identity_vae_weights: Path, tmp_path: Path) -> None:
    config = sr_config(tiny_cxr_root, tmp_path, identity_vae_weights, optim={"batch_size": 2, "max_steps": 2})
    train_sr(config, resume=None)
    with pytest.raises(FileExistsError, match="already has checkpoints"):
        train_sr(config, resume=None)


def test_train_vae_resume_reproduces_the_uninterrupted_run(tiny_cxr_root: Path, tmp_path: Path) -> None:
    def config(out: Path) -> VAETrainConfig:
        return VAETrainConfig.model_validate(
            {
                "run_name": "tiny_vae",
                "output_dir": str(out),
                "data": {"root": str(tiny_cxr_root)},
                "vae": {"hidden_channels": 8, "num_res_blocks": 1},
                "optim": {"batch_size": 2, "max_steps": 4, "warmup_steps": 1},
                "schedule": {"checkpoint_every": 2, "validate_every": 4, "log_every": 1},
            }
        )

    final = load_checkpoint(train_vae(config(tmp_path / "a"), resume=None))
    (tmp_path / "b" / "tiny_vae" / "checkpoints").mkdir(parents=True)
    shutil.copy(
        tmp_path / "a" / "tiny_vae" / "checkpoints" / "step_0000002.pt", tmp_path / "b" / "tiny_vae" / "checkpoints"
    )
    resumed = load_checkpoint(train_vae(config(tmp_path / "b"), resume="auto"))
    for key in ("vae", "ema"):
        for name, tensor in final[key].items():
            assert torch.equal(tensor, resumed[key][name]), f"{key}.{name} differs after resume"
    assert final["step"] == resumed["step"] == 4
    assert latest_checkpoint(tmp_path / "a" / "tiny_vae").name == "step_0000004.pt"


def test_evaluate_reports_model_ceiling_and_bicubic(
    tiny_cxr_root: Path, identity_vae_weights: Path, tmp_path: Path
) -> None:
    config = sr_config(tiny_cxr_root, tmp_path, identity_vae_weights, optim={"batch_size": 2, "max_steps": 2})
    checkpoint = train_sr(config, resume=None)
    report = evaluate(checkpoint, split="test", out_dir=tmp_path / "eval", steps=2, seed=0, batch_size=1)

    dataset = PairDataset(config.data, "test")
    expected_bicubic = []
    for lr, hr in (dataset[0], dataset[1]):
        reference = to_uint8(hr)[0].numpy()
        expected_bicubic.append(psnr(bicubic_upscale(to_uint8(lr)[0].numpy(), 256), reference))
    assert report["summary"]["bicubic"]["psnr"]["mean"] == pytest.approx(np.mean(expected_bicubic))
    # The identity-initialised VAE reconstructs 8-bit images exactly.
    assert report["summary"]["vae_ceiling"]["psnr"] == {"mean": float("inf"), "std": 0.0, "lossless": 2}
    assert np.isfinite(report["summary"]["model"]["psnr"]["mean"])
    assert [r["filename"] for r in report["per_image"]] == dataset.filenames
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved["settings"]["steps"] == 2 and saved["settings"]["split"] == "test"
    assert "| bicubic (cv2.INTER_CUBIC) |" in (tmp_path / "eval" / "report.md").read_text()
    grid = np.array(Image.open(tmp_path / "eval" / "grid.png"))
    assert grid.shape == (2 * 256 + 4, 4 * 256 + 3 * 4)

    # The same images with an antialiased LR made from HR: the bicubic baseline is that LR's.
    area = evaluate(checkpoint, split="test", out_dir=tmp_path / "area", steps=2, seed=0, degradation="area")
    area_bicubic = [
        psnr(bicubic_upscale(make_lr(to_uint8(hr)[0].numpy(), 64, "area"), 256), to_uint8(hr)[0].numpy())
        for _, hr in (dataset[0], dataset[1])
    ]
    assert area["summary"]["bicubic"]["psnr"]["mean"] == pytest.approx(np.mean(area_bicubic))
    assert area["settings"]["degradation"] == "area" and area_bicubic != expected_bicubic


def test_train_sr_with_a_degradation_mix_and_resume(
    tiny_cxr_root: Path, identity_vae_weights: Path, tmp_path: Path
) -> None:
    mix = {"max_rotation_degrees": 0.0, "degradations": {"cubic": 0.5, "area": 0.3, "cubic_aa": 0.2}}
    straight = sr_config(tiny_cxr_root, tmp_path / "a", identity_vae_weights, augment=mix)
    final = load_checkpoint(train_sr(straight, resume=None))
    interrupted = sr_config(tiny_cxr_root, tmp_path / "b", identity_vae_weights, augment=mix)
    (interrupted.run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(straight.run_dir / "checkpoints" / "step_0000002.pt", interrupted.run_dir / "checkpoints")
    _assert_same_state(final, load_checkpoint(train_sr(interrupted, resume="auto")))
    # The mix changes what the model sees: the same seed with cubic only trains other weights.
    cubic_only = sr_config(tiny_cxr_root, tmp_path / "c", identity_vae_weights, augment={"max_rotation_degrees": 0.0})
    other = load_checkpoint(train_sr(cubic_only, resume=None))
    assert not torch.equal(other["unet"]["stem.weight"], final["unet"]["stem.weight"])


def test_regression_objective_trains_at_the_last_timestep_only(
    tiny_cxr_root: Path, identity_vae_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[torch.Tensor] = []
    forward = UNetLite.forward

    def recording_forward(self, noisy_latent, timestep, lr_latent):  # type: ignore[no-untyped-def]
        if torch.is_grad_enabled():
            seen.append(timestep.detach().clone())
        return forward(self, noisy_latent, timestep, lr_latent)

    monkeypatch.setattr(UNetLite, "forward", recording_forward)
    regression = {"objective": "regression", "prediction_type": "sample", "sampling_steps": 1}
    config = sr_config(tiny_cxr_root, tmp_path, identity_vae_weights, diffusion=regression)
    train_sr(config, resume=None)
    assert len(seen) == config.optim.max_steps
    assert all(bool((timesteps == 999).all()) for timesteps in seen)
    with pytest.raises(ValueError, match="objective regression"):
        sr_config(tiny_cxr_root, tmp_path, identity_vae_weights, diffusion={"objective": "regression"})
