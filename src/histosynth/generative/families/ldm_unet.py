"""Latent diffusion with a U-Net denoiser (latent-diffusion-pcam-realism.md sections 3.2
and 4.2): everything but the denoiser is histosynth.generative.ldm's."""

from histosynth.generative.ldm import latent_family
from histosynth.generative.models.unet import UNet, UNetConfig

Trainer, load_generator = latent_family(UNet, UNetConfig)
