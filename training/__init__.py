"""The workstation half of xraysr: data preparation, VAE, UNet-lite, diffusion training, evaluation."""
