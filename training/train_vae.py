"""`xraysr train-vae`: trains the project's chest-X-ray VAE (L1 + KL, optional MSE) on HR images."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.tensorboard import SummaryWriter

from xraysr.training.checkpoint import (
    EMA,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    step_seed,
    warmup_cosine,
)
from xraysr.training.config import VAETrainConfig, save_config
from xraysr.training.data import PairDataset, augment_pair, augmentation_generator, batch_at_step, to_uint8
from xraysr.training.metrics import psnr, ssim
from xraysr.training.unet_lite import parameter_count
from xraysr.training.vae import CxrVAE, build_cxr_vae, kl_divergence

logger = logging.getLogger(__name__)


@torch.no_grad()
def reconstruction_ceiling(vae: torch.nn.Module, dataset: PairDataset, batch_size: int = 16) -> dict[str, float]:
    """Mean PSNR/SSIM of decode(encode(HR)) against HR on 8-bit images: no SR model can score above it."""
    psnrs, ssims = [], []
    for start in range(0, len(dataset), batch_size):
        hr = torch.stack([dataset[i][1] for i in range(start, min(start + batch_size, len(dataset)))])
        reconstruction = vae.decode(vae.encode(hr)).clamp(-1, 1)
        for restored, reference in zip(to_uint8(reconstruction), to_uint8(hr), strict=True):
            psnrs.append(psnr(restored[0].numpy(), reference[0].numpy()))
            ssims.append(ssim(restored[0].numpy(), reference[0].numpy()))
    finite = [value for value in psnrs if np.isfinite(value)]
    return {
        "psnr": float(np.mean(finite)) if finite else float("inf"),
        "ssim": float(np.mean(ssims)),
        "images": len(psnrs),
        "lossless_images": len(psnrs) - len(finite),
    }


def vae_loss(vae: CxrVAE, hr: torch.Tensor, config: VAETrainConfig, generator: torch.Generator) -> torch.Tensor:
    reconstruction, mean, log_variance = vae(hr, generator)
    loss = config.l1_weight * F.l1_loss(reconstruction, hr) + config.kl_weight * kl_divergence(mean, log_variance)
    if config.mse_weight:
        loss = loss + config.mse_weight * F.mse_loss(reconstruction, hr)
    return loss


def train_vae(config: VAETrainConfig, resume: str | Path | None = "auto") -> Path:
    """Trains until ``optim.max_steps``; returns the last checkpoint (its "ema" entry is what SR loads)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run_dir = config.run_dir
    start_checkpoint = latest_checkpoint(run_dir) if resume == "auto" else (Path(resume) if resume else None)
    if resume is None and latest_checkpoint(run_dir) is not None:
        raise FileExistsError(f"{run_dir} already has checkpoints; resume it or choose another run_name")
    train_set, val_set = PairDataset(config.data, "train"), PairDataset(config.data, "val")
    vae = build_cxr_vae(config.vae).to(device)
    optimizer = torch.optim.AdamW(
        vae.parameters(), lr=config.optim.learning_rate, weight_decay=config.optim.weight_decay
    )
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, config.optim.warmup_steps, config.optim.max_steps)
    )
    ema = EMA(vae, config.optim.ema_decay)
    step = 0
    if start_checkpoint is not None:
        state = load_checkpoint(start_checkpoint)
        vae.load_state_dict(state["vae"])
        ema.model.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        step = state["step"]
        logger.info("resumed from %s at step %d", start_checkpoint, step)
    logger.info("CxrVAE: %d parameters", parameter_count(vae))
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    writer = SummaryWriter(str(run_dir / "tensorboard"))
    started = time.monotonic()
    last_path = start_checkpoint
    while step < config.optim.max_steps:
        _, hr, _ = batch_at_step(train_set, step, config.optim.batch_size, config.seed)
        lr_unused = torch.zeros(hr.shape[0], 1, config.data.lr_size, config.data.lr_size)
        _, hr = augment_pair(lr_unused, hr, config.augment, augmentation_generator(config.seed, step))
        generator = torch.Generator().manual_seed(step_seed(config.seed, step, stream=3))
        loss = vae_loss(vae, hr.to(device), config, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), config.optim.grad_clip_norm)
        optimizer.step()
        lr_schedule.step()
        ema.update(vae, step)
        step += 1
        if step % config.schedule.log_every == 0:
            writer.add_scalar("train/loss", loss.item(), step)
            logger.info("step %d loss %.5f (%.1f s)", step, loss.item(), time.monotonic() - started)
        if step % config.schedule.validate_every == 0 or step == config.optim.max_steps:
            ceiling = reconstruction_ceiling(ema.model.cpu(), val_set)
            ema.model.to(device)
            writer.add_scalar("val/psnr", ceiling["psnr"], step)
            writer.add_scalar("val/ssim", ceiling["ssim"], step)
            logger.info("step %d reconstruction ceiling %s", step, json.dumps(ceiling))
        if step % config.schedule.checkpoint_every == 0 or step == config.optim.max_steps:
            last_path = run_dir / "checkpoints" / f"step_{step:07d}.pt"
            save_checkpoint(
                last_path,
                {
                    "step": step,
                    "vae": vae.state_dict(),
                    "ema": ema.model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr_schedule": lr_schedule.state_dict(),
                    "config": config.model_dump(mode="json"),
                },
            )
    writer.close()
    if last_path is None:
        raise RuntimeError("training finished without writing a checkpoint")
    return last_path
