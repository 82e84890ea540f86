"""The ViT conditional GAN (vit-cgan-unified-framework.md section III): TransGAN-style generator
with conditional layer norm, a multi-scale critic with source (WGAN-GP) and class heads; its
class head is also a classifier (the `confidence` filter, strategy `unified`)."""

from __future__ import annotations

import torch

from histosynth.generative import diffaug
from histosynth.generative.models import vitgan
from histosynth.generative.training import GANTrainer


class Trainer(GANTrainer):
    """ViT conditional GAN: WGAN-GP source head + class head with multi-loss weighting (eq. 7)
    over real and (confidence-selected, Algorithm 2) synthetic images; truncated z (τ)."""

    def __init__(self, *args, **kwargs):
        super().__init__(vitgan.ViTGANConfig, vitgan.build_vitgan, *args, **kwargs)
        self.z_dim = self.cfg.z_dim

    def step(self, x, y, train_g: bool) -> dict:
        z = vitgan.truncated_normal((len(x), self.z_dim), self.cfg.tau, device=x.device)
        aug = lambda t: diffaug.augment(t, self.cfg.diffaug)  # noqa: E731  (identity when diffaug is empty)
        with self.autocast(x):
            fake = self.G_run(z, y)  # synthetic images of the batch's own labels
            # D_run(x) is D.d(x); through the wrapper of all of D, so DDP also averages sigma's gradient.
            d_loss, parts = vitgan.discriminator_loss(self.D_run, self.D.mlw, aug(x), y, aug(fake.detach()), y,
                                                      self.cfg.gp_weight, self.cfg.confidence_lambda,
                                                      selective=self.cfg.selective)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        self.D.mlw.project_()
        losses = {"d_loss": d_loss.detach()}
        if train_g:
            with self.autocast(x):
                # Bare critic, as in HistoGAN; the class term weighted as the critic weighs it (eq. 8).
                g_loss = vitgan.generator_loss(self.D.d, aug(fake), y, torch.exp(-self.D.mlw.sigma[1]).detach())
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            self.opt_g.step()
            self.update_ema(len(x))
            losses["g_loss"] = g_loss.detach()
        # Class-head accuracy on real images and confident synthetic images per batch (Algorithm 2).
        return {**losses, "acc_real": parts["acc_real"], "n_syn": parts["n_syn"]}

    def snapshot(self) -> dict:
        # The critic travels too: its class head is the `confidence` filter's and the
        # `unified` strategy's classifier (vit-cgan-unified-framework.md Algorithm 1).
        return {**super().snapshot(), "D": self.D.state_dict()}


def load_generator(state: dict, device="cpu", sampling=None) -> torch.nn.Module:
    """The generator of a snapshot, drawing truncated z (tau), in eval mode."""
    G = vitgan.ViTGenerator(vitgan.ViTGANConfig(**state["model"]))
    G.load_state_dict(state["G"])
    return vitgan.TruncatedViTGenerator(G).to(device).eval()


def critic_from_state(state: dict, device="cpu") -> torch.nn.Module:
    """The critic (source and class heads) of a loaded snapshot, in eval mode (strategy `unified`)."""
    critic = vitgan.Critic(vitgan.ViTGANConfig(**state["model"]))
    critic.load_state_dict(state["D"])
    return critic.to(device).eval()


def load_critic(state: dict, device="cpu"):
    """The snapshot's critic as a classifier: (uint8 NHWC images, batch_size) -> class probabilities."""
    critic = critic_from_state(state, device)
    return lambda images, batch_size=256: vitgan.class_probabilities(critic, images, batch_size, device)
