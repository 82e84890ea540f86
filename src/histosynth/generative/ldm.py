"""Latent diffusion as a generator family (latent-diffusion-pcam-realism.md §3.2, §4.2).

`ldm_unet` and `ldm_dit` share everything but the denoiser: a VAE trained first on
the real subset (rule `train_vae`, frozen here), a class-conditional DDPM in its
latent space trained with the simple ε-MSE loss (eq. 9, cosine schedule) under
AdamW, and an exponential moving average of the denoiser's weights, which is what
snapshots hold and what samples. `LDMTrainer` plugs into the generator training
loop (histosynth.generative.training); `LatentDiffusionGenerator` is what
histosynth.generative.generate loads from a snapshot (through histosynth.generative.families.ldm_unet / ldm_dit): G(z, y) -> images in [-1, 1], with z
the flattened initial latent noise, so every image comes from its own seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from histosynth.errors import InputError
from histosynth.generative.models.diffusion import Diffusion, ema_copy, update_ema
from histosynth.generative.models.vae import VAE, VAEConfig

@dataclass(frozen=True)
class DiffusionTrainConfig:
    timesteps: int = 1000
    ema_decay: float = 0.9999
    label_dropout: float = 0.0  # > 0 trains the null label too, for classifier-free guidance


@dataclass(frozen=True)
class SamplingConfig:
    method: str = "ddim"  # ddim | ddpm (ancestral over all timesteps)
    steps: int = 50  # DDIM steps
    eta: float = 0.0  # DDIM: 0 = deterministic given the initial noise
    guidance_scale: float = 1.0  # classifier-free guidance; 1.0 = off (the paper's setting)
    # Clamp every x0 prediction to [-c, c]: "auto" = the largest |latent| of the VAE's training
    # subset (vae.pt's latent_range), a number = that c, None = no clamp. A lightly trained
    # denoiser's x0 predictions at high noise have several times the latents' spread, and the
    # decoder turns those into saturated blotches; guided-diffusion clamps to the pixel range.
    clip_x0: float | str | None = "auto"

    def __post_init__(self):
        if self.method not in ("ddim", "ddpm"):
            raise ValueError(f"sampling.method must be ddim or ddpm, got {self.method!r}")
        if self.steps < 2:
            raise ValueError(f"sampling.steps must be >= 2, got {self.steps}")
        c = self.clip_x0
        if not (c is None or c == "auto" or (isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0)):
            raise ValueError(f"sampling.clip_x0 must be 'auto', a positive number or null, got {c!r}")


def _vae_from_state(state: dict) -> tuple[VAE, float]:
    vae = VAE(VAEConfig(**state["model"]))
    vae.load_state_dict(state["state"])
    return vae.eval().requires_grad_(False), float(state["latent_scale"])


class LDMTrainer:
    """What the generator training loop needs: models, one training step, resume state, snapshot.
    A family's `Trainer` names its denoiser: `build_denoiser(model_cfg, in_channels, input_size,
    num_classes) -> (config, module)`."""

    build_denoiser = None

    def __init__(self, model_cfg: dict, num_classes: int, image_size: int, lr, betas, amp=None,
                 *, vae_path, diffusion: dict):
        from histosynth.checkpoint import load_checkpoint
        from histosynth.generative.vae_training import load_vae

        self.vae, self.latent_scale = load_vae(vae_path)  # checked: a clear error if it is not a VAE
        self.vae.requires_grad_(False)
        self.vae_state = load_checkpoint(vae_path)  # travels inside every snapshot
        if self.vae.cfg.image_size != image_size:
            raise InputError(f"{vae_path}: VAE trained on {self.vae.cfg.image_size} px images, data is {image_size} px")
        c, h = self.vae.cfg.latent_channels, self.vae.cfg.latent_size
        self.num_classes, self.amp = num_classes, amp
        self.train_cfg = DiffusionTrainConfig(**diffusion)
        self.cfg, self.G = self.build_denoiser(model_cfg, c, h, num_classes)
        self.G_run = self.G  # what step() trains through: the denoiser, or its DDP wrapper (distribute)
        self.ema = ema_copy(self.G)
        self.opt = torch.optim.AdamW(self.G.parameters(), lr=lr, betas=betas)
        self.diffusion = Diffusion(self.train_cfg.timesteps)
        self.z_dim = c * h * h

    def to(self, device):
        self.vae.to(device), self.G.to(device), self.ema.to(device)

    def train(self):
        self.G.train()

    def distribute(self, wrap) -> None:
        """Several processes (histosynth.generative.distributed): the denoiser in DistributedDataParallel; the
        frozen VAE needs no wrapper and the EMA follows the (identical) weights on every rank."""
        self.G_run = wrap(self.G)

    def step(self, x, y, train_g: bool = True) -> dict:
        with torch.no_grad():
            mean, logvar = self.vae.encode(x)
            z = self.vae.sample_latent(mean, logvar) * self.latent_scale
        with torch.autocast(x.device.type, dtype=self.amp, enabled=self.amp is not None):
            loss = self.diffusion.training_loss(self.G_run, z, y, null_label=self.num_classes,
                                                label_dropout=self.train_cfg.label_dropout)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        update_ema(self.ema, self.G, self.train_cfg.ema_decay)
        return {"loss": loss.detach()}

    def state_dict(self) -> dict:
        return {"G": self.G.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])

    def snapshot(self) -> dict:
        """The EMA denoiser (what samples, as in DDPM/LDM practice) and the VAE that decodes."""
        return {"G": self.ema.state_dict(), "model": asdict(self.cfg), "vae": self.vae_state,
                "timesteps": self.train_cfg.timesteps, "ema_decay": self.train_cfg.ema_decay}


class LatentDiffusionGenerator(nn.Module):
    """G(z, y) -> images in [-1, 1]: denoise the latent noise z (flattened), then decode."""

    def __init__(self, build_denoiser, state: dict, sampling: SamplingConfig | dict | None = None):
        super().__init__()
        self.vae, self.latent_scale = _vae_from_state(state["vae"])
        c, h = self.vae.cfg.latent_channels, self.vae.cfg.latent_size
        self.cfg, self.denoiser = build_denoiser(state["model"], c, h, state["model"]["num_classes"])
        self.denoiser.load_state_dict(state["G"])
        self.diffusion = Diffusion(int(state["timesteps"]))
        self.sampling = sampling if isinstance(sampling, SamplingConfig) else SamplingConfig(**(sampling or {}))
        self.latent_shape = (c, h, h)
        self.z_dim = c * h * h  # what histosynth.generative.generate draws per image
        clip = self.sampling.clip_x0
        self.clip_x0 = state["vae"].get("latent_range") if clip == "auto" else clip

    @torch.no_grad()
    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = self.sampling
        noise = z.view(len(z), *self.latent_shape)
        null = self.cfg.num_classes
        if s.method == "ddim":
            latents = self.diffusion.ddim_sample(self.denoiser, noise, y, steps=s.steps, eta=s.eta,
                                                 guidance_scale=s.guidance_scale, null_label=null,
                                                 clip_x0=self.clip_x0)
        else:
            # Ancestral noise per image from a seed derived from that image's own z: an image
            # is the same whatever batch it is generated in.
            gens = [torch.Generator().manual_seed(int.from_bytes(
                hashlib.sha256(zi.cpu().numpy().tobytes()).digest()[:8], "little") >> 1) for zi in z]

            def noise_fn(step, shape):
                return torch.stack([torch.randn(shape[1:], generator=g) for g in gens]).to(z.device)

            latents = self.diffusion.ddpm_sample(self.denoiser, noise, y, guidance_scale=s.guidance_scale,
                                                 null_label=null, clip_x0=self.clip_x0, noise_fn=noise_fn)
        return self.vae.decode(latents / self.latent_scale).clamp(-1, 1)


def load_latent_generator(build_denoiser, state: dict, device="cpu", sampling=None) -> nn.Module:
    """A snapshot's LatentDiffusionGenerator in eval mode; bad sampler settings are the user's error."""
    try:
        return LatentDiffusionGenerator(build_denoiser, state, sampling).to(device).eval()
    except ValueError as e:
        raise InputError(f"generator sampling settings: {e}") from e


def latent_family(denoiser_cls, config_cls):
    """(Trainer, load_generator) of a latent-diffusion family whose denoiser is
    denoiser_cls(config_cls(...)): what a family module in generative/families/ exports."""

    def build_denoiser(model_cfg: dict, in_channels: int, input_size: int, num_classes: int):
        cfg = config_cls(**{**model_cfg, "in_channels": in_channels, "input_size": input_size,
                            "num_classes": num_classes})
        return cfg, denoiser_cls(cfg)

    class Trainer(LDMTrainer):
        pass

    Trainer.build_denoiser = staticmethod(build_denoiser)

    def load_generator(state: dict, device="cpu", sampling=None) -> nn.Module:
        """Denoise the snapshot's latents with its EMA weights, decode with its VAE; eval mode."""
        return load_latent_generator(build_denoiser, state, device, sampling)

    return Trainer, load_generator
