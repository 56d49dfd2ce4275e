"""Training on from a shipped model: its ONNX files back to torch weights, checked, and a run that starts there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.training.test_train import TINY_UNET, TINY_VAE, sr_config
from xraysr.training import from_engines
from xraysr.training.checkpoint import load_checkpoint
from xraysr.training.from_engines import import_engines
from xraysr.training.train import estimate_share, train_sr
from xraysr.training.unet_lite import UNetLite


def test_import_reads_the_architecture_and_reproduces_every_onnx_file(tiny_engine_dir: Path, tmp_path: Path) -> None:
    vae_path, sr_path = import_engines(tiny_engine_dir, tmp_path)  # raises unless all three files are reproduced
    initial = load_checkpoint(sr_path)
    assert initial["unet"] == {**TINY_UNET, "dropout": 0.0}
    assert {key: initial["vae"][key] for key in ("hidden_channels", "num_res_blocks")} == {
        key: TINY_VAE[key] for key in ("hidden_channels", "num_res_blocks")
    }
    assert initial["source"] == "tiny-test"
    assert set(torch.load(vae_path, weights_only=True)["ema"]) >= {"encoder.1.weight", "decoder.0.weight"}


def test_import_refuses_weights_that_do_not_reproduce_the_files(
    tiny_engine_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = from_engines._group_norm_affines

    def shuffled(model, values):  # type: ignore[no-untyped-def]
        affines = real(model, values)
        return [(shift, scale) for scale, shift in affines]  # scale and shift swapped: a wrong mapping

    monkeypatch.setattr(from_engines, "_group_norm_affines", shuffled)
    with pytest.raises(ValueError, match="do not reproduce"):
        import_engines(tiny_engine_dir, tmp_path)
    assert not (tmp_path / "sr_init.pt").exists()


def test_a_run_starts_from_the_imported_unet_and_trains_the_estimate(
    tiny_engine_dir: Path, tiny_cxr_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vae_path, sr_path = import_engines(tiny_engine_dir, tmp_path / "imported")
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    forward = UNetLite.forward

    def recording_forward(self, noisy_latent, timestep, lr_latent):  # type: ignore[no-untyped-def]
        if torch.is_grad_enabled():
            seen.append((noisy_latent.detach().clone(), timestep.detach().clone()))
        return forward(self, noisy_latent, timestep, lr_latent)

    monkeypatch.setattr(UNetLite, "forward", recording_forward)
    config = sr_config(
        tiny_cxr_root,
        tmp_path / "run",
        vae_path,
        init_from=str(sr_path),
        diffusion={"prediction_type": "sample", "sampling_steps": 2, "estimate_fraction": 0.5},
        augment={"max_rotation_degrees": 0.0, "acquisition": {"noise_probability": 1.0, "jpeg_probability": 1.0}},
        optim={"batch_size": 2, "max_steps": 1, "warmup_steps": 1, "learning_rate": 1e-30},
    )
    final = load_checkpoint(train_sr(config, resume=None))
    imported = load_checkpoint(sr_path)["ema"]
    # A learning rate of 1e-30 leaves the weights where the import put them (a fresh init would differ).
    for name, tensor in imported.items():
        torch.testing.assert_close(final["unet"][name], tensor, rtol=0, atol=1e-12)
    # Half the batch saw the estimate's input: the last timestep and an all-zero latent.
    (noisy, timesteps), = seen
    assert int(timesteps[0]) == 999 and bool((noisy[0] == 0).all())
    assert not bool((noisy[1] == 0).all())


def test_init_from_refuses_another_target_scale(tiny_engine_dir: Path, tiny_cxr_root: Path, tmp_path: Path) -> None:
    vae_path, sr_path = import_engines(tiny_engine_dir, tmp_path / "imported")
    scale = load_checkpoint(sr_path)["target_scale"]
    config = sr_config(
        tiny_cxr_root, tmp_path / "run", vae_path, init_from=str(sr_path),
        diffusion={"sampling_steps": 2, "target_scale": scale * 2},
    )
    with pytest.raises(ValueError, match="target_scale"):
        train_sr(config, resume=None)


def test_estimate_share_and_its_config() -> None:
    assert [estimate_share(16, fraction) for fraction in (0.0, 0.01, 0.5, 1.0)] == [0, 1, 8, 16]
    from xraysr.training.config import DiffusionConfig

    with pytest.raises(ValueError, match="prediction_type: sample"):
        DiffusionConfig(estimate_fraction=0.5, prediction_type="epsilon")
