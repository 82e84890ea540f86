"""Class-conditional U-Net: the U-Net-based denoiser of §3.2, Fig. 2 (DDPM / guided-diffusion layout).

Model code only. ``UNet(cfg)(x, t, y)`` predicts the noise epsilon for latents x (N, C, H, W) at
timesteps t (N,) and labels y (N,), same shape as x (no learned variance). The label embedding is
added to the timestep embedding (the paper's "label combined with the timestep") and the sum
scales and shifts the normalised features of every residual block (FiLM). Self-attention runs at
the down-sampling rates in ``attention_resolutions`` and always in the middle.

Label ``num_classes`` is the null label for classifier-free guidance (num_classes + 1 rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from histosynth.generative.models.dit import ConditionEmbedder, SelfAttention, check_inputs, check_positive_ints


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels), channels)


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    input_size: int = 8  # latent side; any side divisible by 2**(levels - 1) runs, this one is validated
    num_classes: int = 2
    base_channels: int = 128  # level widths are base_channels * channel_mults; embeddings are 4x base
    channel_mults: tuple[int, ...] = (1, 2, 2)  # one level each; a stride-2 conv between levels
    num_res_blocks: int = 2
    # Down-sampling rates (guided-diffusion's convention) with attention: 1 = full input size, 2 = half,
    # ... Rates, not sides, so one setting holds for 8x8 and 24x24 latents. (2, 4) on 8x8: 4x4 and 2x2.
    attention_resolutions: tuple[int, ...] = (2, 4)
    num_heads: int = 4
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("channel_mults", "attention_resolutions"):  # YAML gives lists
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        check_positive_ints(self, ("in_channels", "input_size", "num_classes", "base_channels", "num_res_blocks", "num_heads"))
        mults, rates = self.channel_mults, self.attention_resolutions
        if not isinstance(mults, tuple) or not mults or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mults):
            raise ValueError(f"UNetConfig.channel_mults must be a non-empty sequence of positive ints, got {mults!r}")
        allowed = [2**i for i in range(len(mults))]
        if not isinstance(rates, tuple) or any(r not in allowed for r in rates):
            raise ValueError(f"UNetConfig.attention_resolutions must be down-sampling rates in {allowed}, got {rates!r}")
        if self.input_size % allowed[-1]:
            raise ValueError(f"UNetConfig.input_size {self.input_size} must be divisible by {allowed[-1]} ({len(mults)} levels)")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout!r}")
        down, up = self.res_blocks()
        for c in {c for _, cin, cout in down + up for c in (cin, cout)}:
            if c % min(32, c):
                raise ValueError(f"UNetConfig.base_channels {self.base_channels} with channel_mults {mults} gives a "
                                 f"width {c} that GroupNorm({min(32, c)}) cannot split; use multiples of 32")
        for lvl, m in enumerate(mults):
            if (2**lvl in rates or lvl == len(mults) - 1) and (self.base_channels * m) % self.num_heads:
                raise ValueError(f"UNetConfig.num_heads {self.num_heads} must divide the attention width {self.base_channels * m}")

    def res_blocks(self) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """(level, in, out) channels of every ResBlock, down path then up path (up inputs include the skip)."""
        ch = self.base_channels
        skips, down, up = [ch], [], []
        for lvl, m in enumerate(self.channel_mults):
            for _ in range(self.num_res_blocks):
                down.append((lvl, ch, m * self.base_channels))
                ch = m * self.base_channels
                skips.append(ch)
            if lvl < len(self.channel_mults) - 1:
                skips.append(ch)  # the down-sampler's output is a skip too
        for lvl, m in reversed(list(enumerate(self.channel_mults))):
            for _ in range(self.num_res_blocks + 1):
                up.append((lvl, ch + skips.pop(), m * self.base_channels))
                ch = m * self.base_channels
        return down, up


def zero(module: nn.Module) -> nn.Module:
    """Zero a residual branch's last layer: the block starts as the identity (guided-diffusion)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GN-SiLU-conv, then GN modulated by the embedding (scale-shift), SiLU, dropout, zeroed conv; plus skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * cout))
        self.norm = norm(cout)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), zero(nn.Conv2d(cout, cout, 3, padding=1)))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        return self.skip(x) + self.out_layers(self.norm(h) * (1 + scale) + shift)


class AttentionBlock(nn.Module):
    """GroupNorm, multi-head self-attention over the H*W positions, zeroed output projection; residual."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.norm = norm(channels)
        self.attn = SelfAttention(channels, num_heads)
        zero(self.attn.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        out = self.attn(self.norm(x).flatten(2).transpose(1, 2))  # (n, hw, c)
        return x + out.transpose(1, 2).reshape(n, c, h, w)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class CondSequential(nn.Sequential):
    """Sequential that hands the embedding to the ResBlocks only."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        base, nrb, last = cfg.base_channels, cfg.num_res_blocks, len(cfg.channel_mults) - 1
        emb = 4 * base
        self.cond = ConditionEmbedder(base, emb, cfg.num_classes)

        def stage(lvl, cin, cout):
            layers = [ResBlock(cin, cout, emb, cfg.dropout)]
            if 2**lvl in cfg.attention_resolutions:
                layers.append(AttentionBlock(cout, cfg.num_heads))
            return layers

        down, up = cfg.res_blocks()
        self.conv_in = nn.Conv2d(cfg.in_channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        for i, (lvl, cin, cout) in enumerate(down):
            self.down.append(CondSequential(*stage(lvl, cin, cout)))
            if i % nrb == nrb - 1 and lvl < last:
                self.down.append(CondSequential(nn.Conv2d(cout, cout, 3, stride=2, padding=1)))
        mid = base * cfg.channel_mults[-1]
        self.middle = CondSequential(ResBlock(mid, mid, emb, cfg.dropout), AttentionBlock(mid, cfg.num_heads),
                                     ResBlock(mid, mid, emb, cfg.dropout))
        self.up = nn.ModuleList()
        for i, (lvl, cin, cout) in enumerate(up):
            layers = stage(lvl, cin, cout)
            if i % (nrb + 1) == nrb and lvl > 0:
                layers.append(Upsample(cout))
            self.up.append(CondSequential(*layers))
        out_ch = base * cfg.channel_mults[0]
        # Zeroed last conv: the untrained model predicts eps = 0 (and the mean noise is 0).
        self.out = nn.Sequential(norm(out_ch), nn.SiLU(), zero(nn.Conv2d(out_ch, cfg.in_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_inputs(x, t, y, self.cfg.in_channels)
        factor = 2 ** (len(self.cfg.channel_mults) - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"x's height and width must be divisible by {factor}, got {tuple(x.shape[2:])}")
        emb = self.cond(t, y)
        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
