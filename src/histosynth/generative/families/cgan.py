"""The latent-to-image cGAN (cgan-lymphocytes-nct-crc.md section 3.1)."""

from __future__ import annotations

import torch

from histosynth.generative.models import cgan
from histosynth.generative.training import GANTrainer


class Trainer(GANTrainer):
    """BCE critic, non-saturating generator loss."""

    def __init__(self, *args, **kwargs):
        super().__init__(cgan.CGANConfig, cgan.build_cgan, *args, **kwargs)
        self.z_dim = self.cfg.latent_dim

    def step(self, x, y, train_g: bool) -> dict:
        z = torch.randn(len(x), self.z_dim, device=x.device)
        # BCE-with-logits is autocast to float32; no double backward, so bf16 is safe throughout.
        with self.autocast(x):
            fake = self.G_run(z, y)
            d_loss, g_loss = cgan.cgan_losses(self.D_run, x, fake, y)
        # Both gradients first, each into its own network, then both steps: stepping D
        # before g_loss.backward() would modify tensors g_loss's graph still needs.
        self.opt_d.zero_grad(set_to_none=True)
        self.opt_g.zero_grad(set_to_none=True)
        d_loss.backward(inputs=list(self.D.parameters()))
        if train_g:
            g_loss.backward(inputs=list(self.G.parameters()))
        self.opt_d.step()
        if train_g:
            self.opt_g.step()
            self.update_ema(len(x))
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}


def load_generator(state: dict, device="cpu", sampling=None) -> torch.nn.Module:
    """The generator of a snapshot, in eval mode (no batch norm)."""
    G = cgan.Generator(cgan.CGANConfig(**state["model"]))
    G.load_state_dict(state["G"])
    return G.to(device).eval()
