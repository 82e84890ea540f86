"""Latent diffusion with a DiT (adaLN-Zero transformer) denoiser (latent-diffusion-pcam-realism.md sections 3.2
and 4.2): everything but the denoiser is histosynth.generative.ldm's."""

from histosynth.generative.ldm import latent_family
from histosynth.generative.models.dit import DiT, DiTConfig

Trainer, load_generator = latent_family(DiT, DiTConfig)
