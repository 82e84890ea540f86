"""KL-regularised autoencoder: the first stage of the latent diffusion model.

A small AutoencoderKL (Rombach et al. 2022, §3 and App. G), as used by the
latent-diffusion PCam paper (§3.2, Fig. 1): the encoder maps an image in [-1, 1]
to a diagonal Gaussian posterior over a ``latent_channels x latent_size x
latent_size`` map, the decoder maps a latent back to pixels. Diffusion runs on
the (scaled) latents only.

Resolution rule: every level of ``channel_mults`` after the first halves the
map, so the down-sampling factor is ``2 ** (len(channel_mults) - 1)``:
(1, 2, 4) -> 4x (96 px -> 24 px latents), (1, 2, 4, 4) -> 8x (96 -> 12).

Model code only; the loss is L1 reconstruction plus a small KL term (no
perceptual or adversarial term: see ``vae_loss``). The training loop is in
``histosynth.generative.vae_training``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

LOGVAR_RANGE = (-30.0, 20.0)  # AutoencoderKL's clamp: keeps exp(logvar) finite early in training


@dataclass(frozen=True)
class VAEConfig:
    image_size: int = 96
    in_channels: int = 3
    base_channels: int = 64
    channel_mults: tuple = (1, 2, 4)  # width multiplier per level; every level after the first halves the map
    num_res_blocks: int = 1  # per encoder level (the decoder has one more, as in AutoencoderKL)
    latent_channels: int = 4
    kl_weight: float = 1e-6  # weight of the KL term in vae_loss (see its normalisation there)
    dropout: float = 0.0
    mid_attention: bool = True  # one self-attention layer in each mid block (AutoencoderKL has it)

    def __post_init__(self):
        # YAML gives lists; a tuple keeps the frozen config hashable and comparable.
        mults = self.channel_mults
        if isinstance(mults, (list, tuple)):
            object.__setattr__(self, "channel_mults", tuple(mults))
        if not self.channel_mults or not all(
            isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in self.channel_mults
        ):
            raise ValueError(f"VAEConfig.channel_mults must be a non-empty list of positive ints, got {mults!r}")
        for name in ("image_size", "in_channels", "base_channels", "num_res_blocks", "latent_channels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"VAEConfig.{name} must be a positive int, got {v!r}")
        if self.image_size % self.downsample:
            raise ValueError(f"VAEConfig.image_size {self.image_size} must be divisible by the down-sampling "
                             f"factor {self.downsample} (2 ** (len(channel_mults) - 1))")
        if isinstance(self.kl_weight, bool) or not isinstance(self.kl_weight, (int, float)) \
                or not math.isfinite(self.kl_weight) or self.kl_weight < 0:
            raise ValueError(f"VAEConfig.kl_weight must be a finite number >= 0, got {self.kl_weight!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"VAEConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.mid_attention, bool):
            raise ValueError(f"VAEConfig.mid_attention must be true or false, got {self.mid_attention!r}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mults) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample


# ----------------------------------------------------------------------------- layers


def norm(channels: int) -> nn.GroupNorm:
    # 32 groups as in AutoencoderKL, fewer when the (tiny test) width is not divisible by 32.
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus a (1x1-projected when widths differ) skip."""

    def __init__(self, cin: int, cout: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over all positions, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # each (n, hw, c)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(out.transpose(1, 2).reshape(n, c, h, w))


class MidBlock(nn.Sequential):
    def __init__(self, channels: int, dropout: float, attention: bool):
        super().__init__(ResBlock(channels, channels, dropout),
                         Attention(channels) if attention else nn.Identity(),
                         ResBlock(channels, channels, dropout))


class Downsample(nn.Module):
    """Stride-2 3x3 conv (learned, unlike pooling); exact /2 on even sizes."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 then 3x3 conv: no checkerboard artefacts of transposed convs."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# ----------------------------------------------------------------------------- encoder / decoder


class Encoder(nn.Module):
    """x (N, in_channels, H, W) -> (N, 2 * latent_channels, H/f, W/f): posterior mean and log-variance."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        layers, c = [], widths[0]
        for level, w in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(c, w, cfg.dropout))
                c = w
            if level < len(widths) - 1:
                layers.append(Downsample(c))
        self.down = nn.Sequential(*layers)
        self.mid = MidBlock(c, cfg.dropout, cfg.mid_attention)
        self.norm_out = norm(c)
        self.conv_out = nn.Conv2d(c, 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """z (N, latent_channels, h, w) -> image (N, in_channels, h*f, w*f), unbounded."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        c = widths[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, c, 3, padding=1)
        self.mid = MidBlock(c, cfg.dropout, cfg.mid_attention)
        layers = []
        for level in reversed(range(len(widths))):
            # One block more than the encoder, as in AutoencoderKL: decoding is the harder half.
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResBlock(c, widths[level], cfg.dropout))
                c = widths[level]
            if level > 0:
                layers.append(Upsample(c))
        self.up = nn.Sequential(*layers)
        self.norm_out = norm(c)
        self.conv_out = nn.Conv2d(c, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


class VAE(nn.Module):
    """AutoencoderKL: images in [-1, 1] (NCHW) <-> latents (N, latent_channels, latent_size, latent_size).

    The decoder output has no final tanh (as in AutoencoderKL): a tanh would make the
    L1 gradient vanish at saturated (white background, dark nuclei) pixels. Callers
    clamp decoded images to [-1, 1] when they turn them into pixels.
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance (clamped to [-30, 20]), each (N, latent_channels, h, w)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    @staticmethod
    def sample_latent(mean: torch.Tensor, logvar: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + std * eps (reparameterised, so gradients reach the encoder)."""
        # Draw on the generator's device (it may be a CPU generator for a CUDA model), then move.
        device = generator.device if generator is not None else mean.device
        eps = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype).to(mean.device)
        return mean + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction of a posterior sample, mean, logvar)."""
        mean, logvar = self.encode(x)
        return self.decode(self.sample_latent(mean, logvar, generator)), mean, logvar


def vae_loss(x: torch.Tensor, recon: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
             kl_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, recon, kl) with total = recon + kl_weight * kl.

    recon: mean absolute error per pixel and channel (L1; AutoencoderKL's pixel term,
    without its LPIPS and patch-GAN terms). kl: KL(N(mean, exp(logvar)) || N(0, I)),
    summed over the latent dimensions of an image and averaged over the batch, i.e.
    nats per image. Note the two terms are normalised differently (per pixel vs per
    image): relative to AutoencoderKL, which sums the pixel term per image too, a given
    kl_weight weighs the KL H*W*C times more here.
    """
    recon_loss = (x.float() - recon.float()).abs().mean()
    mean, logvar = mean.float(), logvar.float()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1).mean()
    return recon_loss + kl_weight * kl, recon_loss, kl
