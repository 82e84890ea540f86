"""Generator families, one module each, loaded by name (family_module).

A family module holds everything that is that family's own: `Trainer` (its models,
optimisers and one training step, for histosynth.generative.training's loop),
`load_generator(state, device, sampling)` (a snapshot's sampler), and, when its critic
classifies images, `load_critic(state, device)`. Its name, display name and traits are
registered below; nothing else names it, so code provenance counts its module only
for its own jobs. This module imports nothing heavy: the workflow reads it at start-up.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from histosynth.errors import InputError


@dataclass(frozen=True)
class Family:
    """A generator family's registration; its code is the module histosynth.generative.families.<name>."""

    display: str  # its name in tables, figures and the report
    latent: bool = False  # trains in the latent space of the subset's VAE (rule train_vae)
    critic_classifies: bool = False  # its critic's class head is a classifier: filter confidence, strategy unified


# The registry: adding a family is a module in histosynth/families/, a line here and its
# section of the config schema; the rules, tables and provenance derive the rest.
FAMILIES = {
    "histogan": Family("HistoGAN"),
    "cgan": Family("cGAN"),
    "ldm_unet": Family("LDM U-Net", latent=True),
    "ldm_dit": Family("LDM DiT", latent=True),
    "vitgan": Family("ViT-cGAN", critic_classifies=True),
}


def family_module(name: str):
    """The module holding a family's code (Trainer, load_generator, load_critic)."""
    if name not in FAMILIES:
        raise InputError(f"generator family '{name}' is not one of {list(FAMILIES)}")
    return importlib.import_module(f"histosynth.generative.families.{name}")


def family_modules() -> dict[str, tuple[str, ...]]:
    """{family: its own modules}: what code provenance counts only for that family's jobs."""
    return {name: (f"histosynth.generative.families.{name}",) for name in FAMILIES}
