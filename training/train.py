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
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image
from torch.nn import functional as F
from torch.utils.tensorboard import SummaryWriter

from xraysr.training.acquisition import apply_acquisition, draw_acquisition, is_identity
from xraysr.training.checkpoint import (
    EMA,
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
        config.diffusion.sample_steps,
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


def estimate_share(batch_size: int, fraction: float) -> int:
    """Rows of a batch trained on the estimate's input: round(fraction × batch), at least one when fraction > 0."""
    if fraction <= 0:
        return 0
    return min(batch_size, max(1, round(fraction * batch_size)))


def train_sr(config: SRTrainConfig, resume: str | Path | None = "auto") -> Path:
    """Trains until ``optim.max_steps`` and returns the last checkpoint's path.

    ``resume``: "auto" continues from the run folder's latest checkpoint if there is one, a path resumes
    from that file, None starts afresh (refusing to overwrite a run that has checkpoints).
    """
    accelerator = Accelerator(mixed_precision=config.mixed_precision if torch.cuda.is_available() else "no")
    device = accelerator.device
    run_dir = config.run_dir
    start_checkpoint = latest_checkpoint(run_dir) if resume == "auto" else (Path(resume) if resume else None)
    if resume is None and latest_checkpoint(run_dir) is not None:
        raise FileExistsError(f"{run_dir} already has checkpoints; resume it or choose another run_name")

    train_set = PairDataset(config.data, "train")
    val_set = PairDataset(config.data, "val")
    vae = build_frozen_vae(config.vae).to(device)
    encoder = ConditionEncoder(vae, config.data.hr_size // config.data.lr_size).to(device)
    unet = build_unet(config.unet, vae.latent_channels)
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=config.optim.learning_rate, weight_decay=config.optim.weight_decay
    )
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, config.optim.warmup_steps, config.optim.max_steps)
    )
    noise_scheduler = make_training_scheduler(config.diffusion)
    latent_size = config.data.hr_size // vae.downsample_factor
    logger.info(
        "UNet-lite: %d parameters, %.2f GFLOPs per step at %d² latent",
        parameter_count(unet),
        flops_per_step(unet, latent_size) / 1e9,
        latent_size,
    )

    step = 0
    if start_checkpoint is not None:
        state = load_checkpoint(start_checkpoint)
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        step, target_scale = state["step"], state["target_scale"]
        ema = EMA(unet, config.optim.ema_decay)
        ema.model.load_state_dict(state["ema"])
        logger.info("resumed from %s at step %d", start_checkpoint, step)
    elif config.init_from is not None:
        target_scale = init_unet(unet, config)
        ema = EMA(unet, config.optim.ema_decay)
    else:
        target_scale = (
            measure_target_scale(config, train_set, encoder.cpu().to(device))
            if config.diffusion.target_scale == "auto"
            else float(config.diffusion.target_scale)
        )
        ema = EMA(unet, config.optim.ema_decay)
        logger.info("target scale %.4f", target_scale)
    ema.model.to(device)
    unet, optimizer = accelerator.prepare(unet, optimizer)

    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    writer = SummaryWriter(str(run_dir / "tensorboard")) if accelerator.is_main_process else None
    alphas_device = noise_scheduler.alphas_cumprod.to(device)
    noise_scheduler.alphas_cumprod = alphas_device
    started = time.monotonic()
    last_path = start_checkpoint
    while step < config.optim.max_steps:
        torch.manual_seed(step_seed(config.seed, step, stream=1))  # dropout, if any, is per-step too
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
        lr, hr = lr[shard].to(device), hr[shard].to(device)
        noise_generator = torch.Generator().manual_seed(step_seed(config.seed, step, stream=2))
        with torch.no_grad():
            lr_latent = encoder(lr)
            sample = diffusion_sample(vae.encode(hr), lr_latent, config.diffusion, target_scale)
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
            prediction = unet(noisy, timesteps, lr_latent)
        loss = F.mse_loss(prediction.float(), regression_target(noise_scheduler, sample, noise, timesteps))
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(unet.parameters(), config.optim.grad_clip_norm)
        optimizer.step()
        lr_schedule.step()
        ema.update(accelerator.unwrap_model(unet), step)
        step += 1

        if writer is not None and step % config.schedule.log_every == 0:
            writer.add_scalar("train/loss", loss.item(), step)
            writer.add_scalar("train/grad_norm", float(grad_norm), step)
            writer.add_scalar("train/learning_rate", lr_schedule.get_last_lr()[0], step)
            logger.info("step %d loss %.4f (%.1f s)", step, loss.item(), time.monotonic() - started)
        is_last = step == config.optim.max_steps
        grid = None
        if writer is not None and (step % config.schedule.validate_every == 0 or is_last):
            scores, grid = validate(
                ema.model, encoder, val_set, config, target_scale, device, config.schedule.validation_images
            )
            for name, value in scores.items():
                writer.add_scalar(f"val/{name}", value, step)
            logger.info("step %d validation %s", step, json.dumps({k: round(v, 4) for k, v in scores.items()}))
        if writer is not None and (step % config.schedule.sample_grid_every == 0 or is_last):
            if grid is None:
                _, grid = validate(ema.model, encoder, val_set, config, target_scale, device, images=4)
            writer.add_image("val/lr_bicubic_sr_hr", grid[None], step)
            (run_dir / "samples").mkdir(exist_ok=True)
            Image.fromarray(grid).save(run_dir / "samples" / f"step_{step:07d}.png")
        if accelerator.is_main_process and (
            step % config.schedule.checkpoint_every == 0 or step == config.optim.max_steps
        ):
            last_path = run_dir / "checkpoints" / f"step_{step:07d}.pt"
            save_checkpoint(
                last_path,
                {
                    "step": step,
                    "unet": accelerator.unwrap_model(unet).state_dict(),
                    "ema": ema.model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr_schedule": lr_schedule.state_dict(),
                    "target_scale": target_scale,
                    "config": config.model_dump(mode="json"),
                },
            )
    if writer is not None:
        writer.close()
    accelerator.wait_for_everyone()
    if last_path is None:
        raise RuntimeError("training finished without writing a checkpoint")
    return last_path
