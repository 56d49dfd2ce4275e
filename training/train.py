"""`xraysr train`: the latent-diffusion SR training loop (noise-prediction MSE by default).

1. The frozen VAE encodes the augmented HR image and the bicubic-upsampled LR image.
2. Forward diffusion noises x0 (the scaled latent residual) at a random timestep.
3. UNet-lite, given the noisy x0, the timestep and the LR latent, predicts the noise; MSE against it.
Runs on one CPU, one GPU, or several GPUs through ``accelerate launch``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.tensorboard import SummaryWriter

from xraysr.training.acquisition import apply_acquisition, draw_acquisition, is_identity
from xraysr.training.checkpoint import (
    EMA,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    step_seed,
    warmup_cosine,
)
from xraysr.training.config import SRTrainConfig, save_config
from xraysr.training.data import PairDataset, augment_pair, augmentation_generator, batch_at_step, to_uint8
from xraysr.training.degradation import degrade_mixed, draw_degradations
from xraysr.training.diffusion import (
    ConditionEncoder,
    diffusion_sample,
    make_training_scheduler,
    regression_target,
    super_resolve,
)
from xraysr.training.metrics import bicubic_upscale, psnr, ssim
from xraysr.training.unet_lite import UNetLite, build_unet, flops_per_step, parameter_count
from xraysr.training.vae import build_frozen_vae
from xraysr.training.visualize import comparison_grid

logger = logging.getLogger(__name__)


def train_sr(config: SRTrainConfig, resume: str | Path | None = "auto") -> Path:
    """Trains until ``optim.max_steps`` and returns the last checkpoint's path.

    ``resume``: "auto" continues from the run folder's latest checkpoint if there is one, a path resumes
    from that file, None starts afresh (refusing to overwrite a run that has checkpoints).
    """
    accelerator = Accelerator(mixed_precision=config.mixed_precision if torch.cuda.is_available() else "no")
    device = accelerator.device
    start_checkpoint = checkpoint_to_resume(config.run_dir, resume)
    train_set, val_set = PairDataset(config.data, "train"), PairDataset(config.data, "val")
    encoder, unet = build_models(config, device)
    optimizer, lr_schedule = build_optimizer(unet, config)
    state = start_state(config, start_checkpoint, unet, optimizer, lr_schedule, train_set, encoder)
    state.ema.model.to(device)
    state.unet, state.optimizer = accelerator.prepare(state.unet, state.optimizer)
    writer = open_run_dir(config) if accelerator.is_main_process else None
    noise_scheduler = make_training_scheduler(config.diffusion)
    # add_noise indexes the table with the batch's timesteps, which are on the device.
    noise_scheduler.alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)

    started = time.monotonic()
    last_path = start_checkpoint
    while state.step < config.optim.max_steps:
        loss, grad_norm = train_step(config, state, encoder, noise_scheduler, train_set, accelerator)
        # The side jobs, each on its own schedule (config.schedule); only the main process logs and validates.
        if writer is not None:
            log_training(writer, config, state, loss, grad_norm, started)
            validate_and_save_grid(writer, config, state, encoder, val_set, device)
        if accelerator.is_main_process and (
            state.step % config.schedule.checkpoint_every == 0 or state.step == config.optim.max_steps
        ):
            last_path = save_training_checkpoint(config, state, accelerator)
    if writer is not None:
        writer.close()
    accelerator.wait_for_everyone()
    if last_path is None:
        raise RuntimeError("training finished without writing a checkpoint")
    return last_path


@dataclass
class TrainingState:
    """What each optimiser step advances and a checkpoint saves: ``unet`` and ``optimizer`` are replaced by
    ``accelerator.prepare``'s wrappers once the run starts; ``ema`` holds the weights that are sampled and exported,
    and ``target_scale`` the factor the diffusion sample is multiplied by (fixed for the whole run)."""

    step: int
    target_scale: float
    unet: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    lr_schedule: torch.optim.lr_scheduler.LambdaLR


def checkpoint_to_resume(run_dir: Path, resume: str | Path | None) -> Path | None:
    """The checkpoint a run continues from (``train_sr``'s ``resume``), or None for a fresh start.

    A fresh start (``resume`` None) refuses a run folder that already has checkpoints, so none is overwritten.
    """
    if resume is None and latest_checkpoint(run_dir) is not None:
        raise FileExistsError(f"{run_dir} already has checkpoints; resume it or choose another run_name")
    if resume == "auto":
        return latest_checkpoint(run_dir)
    return Path(resume) if resume else None


def build_models(config: SRTrainConfig, device: torch.device) -> tuple[ConditionEncoder, UNetLite]:
    """The frozen VAE inside the condition encoder, on ``device``; and a freshly initialised UNet-lite, left where it
    is built until ``accelerator.prepare`` places it. Logs the UNet's size."""
    vae = build_frozen_vae(config.vae).to(device)
    encoder = ConditionEncoder(vae, config.data.hr_size // config.data.lr_size).to(device)
    unet = build_unet(config.unet, vae.latent_channels)
    latent_size = config.data.hr_size // vae.downsample_factor
    logger.info(
        "UNet-lite: %d parameters, %.2f GFLOPs per step at %d² latent",
        parameter_count(unet),
        flops_per_step(unet, latent_size) / 1e9,
        latent_size,
    )
    return encoder, unet


def build_optimizer(
    unet: nn.Module, config: SRTrainConfig
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the UNet, and its learning rate's linear warm-up then cosine decay (``warmup_cosine``)."""
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=config.optim.learning_rate, weight_decay=config.optim.weight_decay
    )
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, config.optim.warmup_steps, config.optim.max_steps)
    )
    return optimizer, lr_schedule


def start_state(
    config: SRTrainConfig,
    start_checkpoint: Path | None,
    unet: UNetLite,
    optimizer: torch.optim.Optimizer,
    lr_schedule: torch.optim.lr_scheduler.LambdaLR,
    train_set: PairDataset,
    encoder: ConditionEncoder,
) -> TrainingState:
    """Where the run starts, one of three ways: resumed (``start_checkpoint``'s weights, optimiser, schedule, step
    and target scale), initialised from ``config.init_from``'s EMA weights and target scale at step 0, or fresh
    at step 0 with the config's target scale, measured on the training set when it is "auto"."""
    if start_checkpoint is not None:
        saved = load_checkpoint(start_checkpoint)
        unet.load_state_dict(saved["unet"])
        optimizer.load_state_dict(saved["optimizer"])
        lr_schedule.load_state_dict(saved["lr_schedule"])
        ema = EMA(unet, config.optim.ema_decay)
        ema.model.load_state_dict(saved["ema"])
        logger.info("resumed from %s at step %d", start_checkpoint, saved["step"])
        return TrainingState(saved["step"], saved["target_scale"], unet, ema, optimizer, lr_schedule)
    if config.init_from is not None:
        target_scale = init_unet(unet, config)
        return TrainingState(0, target_scale, unet, EMA(unet, config.optim.ema_decay), optimizer, lr_schedule)
    target_scale = (
        measure_target_scale(config, train_set, encoder)
        if config.diffusion.target_scale == "auto"
        else float(config.diffusion.target_scale)
    )
    ema = EMA(unet, config.optim.ema_decay)
    logger.info("target scale %.4f", target_scale)
    return TrainingState(0, target_scale, unet, ema, optimizer, lr_schedule)


def init_unet(unet: UNetLite, config: SRTrainConfig) -> float:
    """Loads ``config.init_from``'s (EMA) weights into ``unet`` and returns the target scale they were trained at;
    a config naming another scale is refused, since the network's outputs would be mis-scaled."""
    assert config.init_from is not None
    initial = load_checkpoint(config.init_from)
    unet.load_state_dict(initial["ema"])
    scale = float(initial["target_scale"])
    if config.diffusion.target_scale != "auto" and abs(float(config.diffusion.target_scale) - scale) > 1e-6:
        raise ValueError(
            f"init_from {config.init_from} was trained at target_scale {scale}, the config says "
            f"{config.diffusion.target_scale}: the network's outputs would be mis-scaled"
        )
    logger.info("UNet initialised from %s", config.init_from)
    return scale


@torch.no_grad()
def measure_target_scale(config: SRTrainConfig, dataset: PairDataset, encoder: ConditionEncoder) -> float:
    """1 / std of the unscaled diffusion sample over the training set, as SD measures its latent scale."""
    samples = []
    for start in range(0, len(dataset), 32):
        lr, hr = dataset.pairs(torch.arange(start, min(start + 32, len(dataset))))
        samples.append(diffusion_sample(encoder.vae.encode(hr), encoder(lr), config.diffusion, 1.0))
    std = torch.cat(samples).std().item()
    if not np.isfinite(std) or std <= 0:
        raise ValueError(f"the diffusion sample has std {std} on the training set; cannot scale it")
    return 1.0 / std


def open_run_dir(config: SRTrainConfig) -> SummaryWriter:
    """Creates the run folder with the run's config.yaml, and returns its TensorBoard writer (main process only)."""
    config.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, config.run_dir / "config.yaml")
    return SummaryWriter(str(config.run_dir / "tensorboard"))


def training_batch(
    config: SRTrainConfig, train_set: PairDataset, step: int, accelerator: Accelerator
) -> tuple[Tensor, Tensor]:
    """This process's share of global step ``step``'s (LR, HR) batch, augmented, on its device.

    Every draw comes from (seed, step) alone (``batch_at_step``, ``augmentation_generator``), so a resumed run
    sees the batches the uninterrupted run would have.
    """
    lr, hr, _ = batch_at_step(train_set, step, config.optim.batch_size, config.seed)
    augmentation = augmentation_generator(config.seed, step)
    lr, hr = augment_pair(lr, hr, config.augment, augmentation)
    if config.augment.lr_source == "degrade_augmented_hr":
        # Drawn after the augmentation from the same stream, so a cubic-only run keeps its old batches.
        kinds = draw_degradations(hr.shape[0], config.augment.degradations, augmentation)
        if not is_identity(config.augment.acquisition):
            # The film as another hospital would have stored it; its LR is made from that film.
            hr = apply_acquisition(hr, draw_acquisition(hr.shape[0], config.augment.acquisition, augmentation))
        lr = degrade_mixed(hr, config.data.lr_size, kinds)
    shard = slice(accelerator.process_index, None, accelerator.num_processes)
    return lr[shard].to(accelerator.device), hr[shard].to(accelerator.device)


def diffusion_loss(
    config: SRTrainConfig,
    state: TrainingState,
    encoder: ConditionEncoder,
    noise_scheduler: DDPMScheduler,
    lr: Tensor,
    hr: Tensor,
    accelerator: Accelerator,
) -> Tensor:
    """The module docstring's steps 1-3 on one batch: the MSE between the UNet's output and its regression target
    (the noise, the sample or v) at a random timestep, or at the last one for the estimate's share of the batch."""
    device = accelerator.device
    noise_generator = torch.Generator().manual_seed(step_seed(config.seed, state.step, stream=2))
    with torch.no_grad():
        lr_latent = encoder(lr)
        sample = diffusion_sample(encoder.vae.encode(hr), lr_latent, config.diffusion, state.target_scale)
    noise = torch.randn(sample.shape, generator=noise_generator).to(device)
    timesteps = torch.randint(
        0, config.diffusion.num_train_timesteps, (sample.shape[0],), generator=noise_generator
    ).to(device)
    if config.diffusion.objective == "regression":
        timesteps = torch.full_like(timesteps, config.diffusion.num_train_timesteps - 1)
    noisy = noise_scheduler.add_noise(sample, noise, timesteps)
    estimate_rows = estimate_share(sample.shape[0], config.diffusion.estimate_fraction)
    if estimate_rows:
        # The estimate's input (service/sampler.py): the last timestep and a zero latent, the mean of x_T.
        timesteps[:estimate_rows] = config.diffusion.num_train_timesteps - 1
        noisy[:estimate_rows] = 0.0
    with accelerator.autocast():
        prediction = state.unet(noisy, timesteps, lr_latent)
    return F.mse_loss(prediction.float(), regression_target(noise_scheduler, sample, noise, timesteps))


def estimate_share(batch_size: int, fraction: float) -> int:
    """Rows of a batch trained on the estimate's input: round(fraction × batch), at least one when fraction > 0."""
    if fraction <= 0:
        return 0
    return min(batch_size, max(1, round(fraction * batch_size)))


def train_step(
    config: SRTrainConfig,
    state: TrainingState,
    encoder: ConditionEncoder,
    noise_scheduler: DDPMScheduler,
    train_set: PairDataset,
    accelerator: Accelerator,
) -> tuple[Tensor, Tensor]:
    """One optimiser step on step ``state.step``'s batch: the loss, its clipped gradient, the learning-rate schedule
    and the EMA; then ``state.step`` counts it. Returns the loss and the gradient norm before clipping."""
    torch.manual_seed(step_seed(config.seed, state.step, stream=1))  # dropout, if any, is per-step too
    lr, hr = training_batch(config, train_set, state.step, accelerator)
    loss = diffusion_loss(config, state, encoder, noise_scheduler, lr, hr, accelerator)
    state.optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    grad_norm = accelerator.clip_grad_norm_(state.unet.parameters(), config.optim.grad_clip_norm)
    state.optimizer.step()
    state.lr_schedule.step()
    state.ema.update(accelerator.unwrap_model(state.unet), state.step)
    state.step += 1
    return loss, grad_norm


def log_training(
    writer: SummaryWriter, config: SRTrainConfig, state: TrainingState, loss: Tensor, grad_norm: Tensor, started: float
) -> None:
    """Every ``schedule.log_every`` steps: the loss, gradient norm and learning rate to TensorBoard, and a log line."""
    if state.step % config.schedule.log_every != 0:
        return
    writer.add_scalar("train/loss", loss.item(), state.step)
    writer.add_scalar("train/grad_norm", float(grad_norm), state.step)
    writer.add_scalar("train/learning_rate", state.lr_schedule.get_last_lr()[0], state.step)
    logger.info("step %d loss %.4f (%.1f s)", state.step, loss.item(), time.monotonic() - started)


def validate_and_save_grid(
    writer: SummaryWriter,
    config: SRTrainConfig,
    state: TrainingState,
    encoder: ConditionEncoder,
    val_set: PairDataset,
    device: torch.device,
) -> None:
    """Every ``schedule.validate_every`` steps and at the last: the EMA model's validation scores (``validate``) to
    TensorBoard and the log. Every ``schedule.sample_grid_every`` steps and at the last: its sample grid to
    TensorBoard and samples/step_NNNNNNN.png, reusing the validation's grid when both fall on one step."""
    is_last = state.step == config.optim.max_steps
    grid = None
    if state.step % config.schedule.validate_every == 0 or is_last:
        scores, grid = validate(
            state.ema.model, encoder, val_set, config, state.target_scale, device, config.schedule.validation_images
        )
        for name, value in scores.items():
            writer.add_scalar(f"val/{name}", value, state.step)
        logger.info("step %d validation %s", state.step, json.dumps({k: round(v, 4) for k, v in scores.items()}))
    if state.step % config.schedule.sample_grid_every == 0 or is_last:
        if grid is None:
            _, grid = validate(state.ema.model, encoder, val_set, config, state.target_scale, device, images=4)
        writer.add_image("val/lr_bicubic_sr_hr", grid[None], state.step)
        (config.run_dir / "samples").mkdir(exist_ok=True)
        Image.fromarray(grid).save(config.run_dir / "samples" / f"step_{state.step:07d}.png")


@torch.no_grad()
def validate(
    denoiser: UNetLite,
    encoder: ConditionEncoder,
    dataset: PairDataset,
    config: SRTrainConfig,
    target_scale: float,
    device: torch.device,
    images: int,
) -> tuple[dict[str, float], np.ndarray]:
    """PSNR/SSIM of the EMA model and of bicubic on the first validation images; and a sample grid."""
    count = min(images, len(dataset))
    lr, hr = dataset.pairs(torch.arange(count))
    generator = torch.Generator().manual_seed(config.seed)
    sr = super_resolve(
        denoiser,
        encoder,
        encoder.vae,
        lr.to(device),
        config.diffusion,
        target_scale,
        config.diffusion.sampling_steps,
        generator,
    ).cpu()
    totals = {"psnr_sr": 0.0, "ssim_sr": 0.0, "psnr_bicubic": 0.0, "ssim_bicubic": 0.0}
    rows = []
    for lr_image, sr_image, hr_image in zip(to_uint8(lr), to_uint8(sr), to_uint8(hr), strict=True):
        lr_u8, sr_u8, hr_u8 = lr_image[0].numpy(), sr_image[0].numpy(), hr_image[0].numpy()
        bicubic_u8 = bicubic_upscale(lr_u8, hr_u8.shape[0])
        totals["psnr_sr"] += psnr(sr_u8, hr_u8)
        totals["ssim_sr"] += ssim(sr_u8, hr_u8)
        totals["psnr_bicubic"] += psnr(bicubic_u8, hr_u8)
        totals["ssim_bicubic"] += ssim(bicubic_u8, hr_u8)
        if len(rows) < 4:
            rows.append([lr_u8, bicubic_u8, sr_u8, hr_u8])
    return {name: value / count for name, value in totals.items()}, comparison_grid(rows)


def save_training_checkpoint(config: SRTrainConfig, state: TrainingState, accelerator: Accelerator) -> Path:
    """Writes checkpoints/step_NNNNNNN.pt: all ``start_state`` needs to resume, and the config it was trained with."""
    path = checkpoint_path(config.run_dir, state.step)
    save_checkpoint(
        path,
        {
            "step": state.step,
            "unet": accelerator.unwrap_model(state.unet).state_dict(),
            "ema": state.ema.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "lr_schedule": state.lr_schedule.state_dict(),
            "target_scale": state.target_scale,
            "config": config.model_dump(mode="json"),
        },
    )
    return path
