"""training/config.py: YAML run configs load, refuse bad values with the file and field named, and round-trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from xraysr.training.checkpoint import checkpoint_path
from xraysr.training.config import (
    ConfigError,
    CxrVAEConfig,
    DiffusersVAEConfig,
    SRTrainConfig,
    VAETrainConfig,
    load_config,
    save_config,
)

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"

VAE_YAML = """\
run_name: vae_test
data:
  root: runs/data/cxr
vae:
  latent_channels: 16
  hidden_channels: 32
kl_weight: 1.0e-4
optim:
  max_steps: 10
"""

SR_YAML = """\
run_name: sr_test
output_dir: /tmp/xraysr-runs
data:
  root: runs/data/cxr
vae:
  kind: cxr
  checkpoint: runs/vae_test/checkpoints/step_0000010.pt
unet:
  channel_multipliers: [1, 2]
diffusion:
  prediction_type: v_prediction
  target_scale: 1.5
  sampling_steps: 10
"""


def _write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- valid files ----------------------------------------------------------------------------------------


def test_load_a_vae_config(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, VAE_YAML), VAETrainConfig)
    assert config.run_name == "vae_test"
    assert config.run_dir == Path("runs/vae_test")
    assert config.data.root == Path("runs/data/cxr")
    assert (config.data.hr_size, config.data.lr_size) == (256, 64)
    assert config.vae == CxrVAEConfig(latent_channels=16, hidden_channels=32)
    assert config.kl_weight == 1e-4
    assert config.optim.max_steps == 10
    assert config.optim.learning_rate == 2e-4  # a default left untouched


def test_load_an_sr_config(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, SR_YAML), SRTrainConfig)
    assert config.run_dir == Path("/tmp/xraysr-runs/sr_test")
    assert isinstance(config.vae, CxrVAEConfig)
    assert config.vae.checkpoint == Path("runs/vae_test/checkpoints/step_0000010.pt")
    assert config.unet.channel_multipliers == (1, 2)
    assert config.diffusion.prediction_type == "v_prediction"
    assert config.diffusion.target_scale == 1.5
    assert config.diffusion.target == "residual"
    assert config.diffusion.sampling_steps == 10


def test_load_an_sr_config_with_a_diffusers_vae(tmp_path: Path) -> None:
    text = SR_YAML.replace(
        "  kind: cxr\n  checkpoint: runs/vae_test/checkpoints/step_0000010.pt\n",
        "  kind: diffusers\n  architecture: autoencoder_tiny\n  model: /models/taesd\n",
    )
    config = load_config(_write(tmp_path, text), SRTrainConfig)
    assert config.vae == DiffusersVAEConfig(architecture="autoencoder_tiny", model="/models/taesd")


# --- invalid files: a ConfigError naming the file and the field -----------------------------------------


@pytest.mark.parametrize(
    ("config_type", "text", "expected"),
    [
        pytest.param(
            VAETrainConfig,
            VAE_YAML.replace("kl_weight:", "kl_wieght:"),
            "kl_wieght: Extra inputs are not permitted",
            id="unknown-key",
        ),
        pytest.param(
            VAETrainConfig,
            VAE_YAML.replace("max_steps: 10", "max_steps: ten"),
            "optim.max_steps: Input should be a valid integer",
            id="wrong-type",
        ),
        pytest.param(
            VAETrainConfig,
            VAE_YAML.replace("  root: runs/data/cxr\n", "  root: runs/data/cxr\n  hr_size: 200\n"),
            "data: hr_size 200 is not a multiple of lr_size 64",
            id="non-integer-scale",
        ),
        pytest.param(
            SRTrainConfig,
            SR_YAML.replace("  checkpoint: runs/vae_test/checkpoints/step_0000010.pt\n", ""),
            ": vae.checkpoint is required: train one with `xraysr train-vae` first",
            id="cxr-vae-without-checkpoint",
        ),
        pytest.param(
            SRTrainConfig,
            SR_YAML.replace("kind: cxr", "kind: vqgan"),
            "vae: Input tag 'vqgan' found using 'kind' does not match any of the expected tags",
            id="unknown-vae-kind",
        ),
        pytest.param(
            SRTrainConfig,
            SR_YAML.replace("prediction_type: v_prediction", "prediction_type: noise"),
            "diffusion.prediction_type: Input should be 'epsilon', 'sample' or 'v_prediction'",
            id="unknown-choice",
        ),
        pytest.param(
            VAETrainConfig,
            VAE_YAML.replace("run_name: vae_test", "run_name: my run"),
            "run_name: String should match pattern",
            id="run-name-with-space",
        ),
        pytest.param(
            VAETrainConfig,
            VAE_YAML.replace("run_name: vae_test\n", ""),
            "run_name: Field required",
            id="missing-field",
        ),
    ],
)
def test_invalid_config_names_file_and_field(tmp_path: Path, config_type: type, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path, config_type)
    message = str(raised.value)
    assert message.startswith(f"invalid config {path}: ")
    assert expected in message


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    text = VAE_YAML.replace("kl_weight:", "kl_wieght:").replace("max_steps: 10", "max_steps: -1")
    with pytest.raises(ConfigError) as raised:
        load_config(_write(tmp_path, text), VAETrainConfig)
    problems = str(raised.value).split(": ", 1)[1].split("; ")
    assert problems == [
        "optim.max_steps: Input should be greater than 0 (got -1)",
        "kl_wieght: Extra inputs are not permitted (got 0.0001)",
    ]


@pytest.mark.parametrize(
    ("text", "type_name"),
    [("- run_name: a\n- run_name: b\n", "list"), ("just a string\n", "str"), ("", "NoneType")],
    ids=["list", "scalar", "empty"],
)
def test_a_yaml_file_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str, type_name: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=f"must be a YAML mapping, got {type_name}$") as raised:
        load_config(path, VAETrainConfig)
    assert str(raised.value) == f"config {path} must be a YAML mapping, got {type_name}"


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as raised:
        load_config(path, VAETrainConfig)
    assert str(raised.value).startswith(f"cannot read config {path}: ")
    assert isinstance(raised.value.__cause__, FileNotFoundError)


def test_malformed_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "run_name: [unclosed\n")
    with pytest.raises(ConfigError, match=f"^cannot read config {path}: "):
        load_config(path, VAETrainConfig)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# --- save_config -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config_type", "text"),
    [(VAETrainConfig, VAE_YAML), (SRTrainConfig, SR_YAML)],
    ids=["vae", "sr"],
)
def test_save_then_load_round_trips(tmp_path: Path, config_type: type, text: str) -> None:
    config = load_config(_write(tmp_path, text), config_type)
    saved = tmp_path / "saved.yaml"
    save_config(config, saved)
    assert load_config(saved, config_type) == config
    # Every default is written out, so the saved file alone reproduces the run.
    assert "ema_decay: 0.999" in saved.read_text()


def test_save_then_load_round_trips_a_diffusers_sr_config(tmp_path: Path) -> None:
    config = SRTrainConfig(
        run_name="sr_taesd",
        data={"root": "runs/data/cxr"},
        vae=DiffusersVAEConfig(architecture="autoencoder_tiny", model="madebyollin/taesd"),
    )
    saved = tmp_path / "saved.yaml"
    save_config(config, saved)
    assert load_config(saved, SRTrainConfig) == config


# --- the repository's own configs ------------------------------------------------------------------------


def test_repository_vae_config_validates() -> None:
    config = load_config(REPO_CONFIGS / "vae_cxr.yaml", VAETrainConfig)
    assert config.run_name == "vae_cxr"
    assert config.vae.latent_channels == 16


def test_repository_sr_config_validates() -> None:
    config = load_config(REPO_CONFIGS / "sr_cxr.yaml", SRTrainConfig)
    assert config.run_name == "sr_cxr"
    assert isinstance(config.vae, CxrVAEConfig)


def test_repository_sr_config_uses_the_final_checkpoint_of_the_repository_vae_run() -> None:
    vae_run = load_config(REPO_CONFIGS / "vae_cxr.yaml", VAETrainConfig)
    sr_run = load_config(REPO_CONFIGS / "sr_cxr.yaml", SRTrainConfig)
    assert sr_run.vae.checkpoint == checkpoint_path(vae_run.run_dir, vae_run.optim.max_steps)
    # The SR run must rebuild the very architecture those weights were trained in.
    assert sr_run.vae.model_copy(update={"checkpoint": None}) == vae_run.vae


@pytest.mark.parametrize("path", sorted(REPO_CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_every_repository_config_validates(path: Path) -> None:
    # configs/vae_*.yaml train a VAE; every other config trains an SR model.
    config_type = VAETrainConfig if path.name.startswith("vae_") else SRTrainConfig
    assert load_config(path, config_type).run_name == path.stem


def test_widths_the_group_norm_cannot_split_are_refused_at_load() -> None:
    from pydantic import ValidationError

    from xraysr.training.config import CxrVAEConfig, UNetConfig

    with pytest.raises(ValidationError, match="multiple of 8"):
        UNetConfig(base_channels=12)
    with pytest.raises(ValidationError, match="multiple of 8"):
        CxrVAEConfig(hidden_channels=20)


def test_the_old_name_of_sampling_steps_still_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(SR_YAML.replace("  sampling_steps: 10", "  sample_steps: 10"))
    assert load_config(path, SRTrainConfig).diffusion.sampling_steps == 10
    assert "diffusion.sample_steps is renamed diffusion.sampling_steps" in caplog.text
    path.write_text(SR_YAML.replace("  sampling_steps: 10", "  sample_steps: 10\n  sampling_steps: 10"))
    with pytest.raises(ConfigError, match="give one of the two"):
        load_config(path, SRTrainConfig)
