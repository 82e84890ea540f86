"""Latent diffusion with a DiT (adaLN-Zero transformer) denoiser (latent-diffusion-pcam-realism.md sections 3.2
and 4.2): everything but the denoiser is histosynth.generative.ldm's."""

from __future__ import annotations

import torch

from histosynth.generative.ldm import LDMTrainer, load_latent_generator
from histosynth.generative.models.dit import DiT, DiTConfig


def build_denoiser(model_cfg: dict, in_channels: int, input_size: int, num_classes: int):
    """(config, module) of the denoiser for latents of this shape."""
    cfg = DiTConfig(**{**model_cfg, "in_channels": in_channels, "input_size": input_size, "num_classes": num_classes})
    return cfg, DiT(cfg)


class Trainer(LDMTrainer):
    build_denoiser = staticmethod(build_denoiser)


def load_generator(state: dict, device="cpu", sampling=None) -> torch.nn.Module:
    """Denoise the snapshot's latents with its EMA weights, decode with its VAE; eval mode."""
    return load_latent_generator(build_denoiser, state, device, sampling)
