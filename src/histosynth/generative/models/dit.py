"""Diffusion transformer (DiT, Peebles & Xie 2023): the transformer-based denoiser of §3.2, Fig. 2.

Model code only. ``DiT(cfg)(x, t, y)`` predicts the noise epsilon for latents x (N, C, H, W) at
timesteps t (N,) and labels y (N,), same shape as x (no learned variance). Layout follows DiT:
patchify (conv, kernel = stride = patch) -> fixed 2-D sin-cos positions -> adaLN-Zero blocks ->
adaLN final layer -> unpatchify. As in the paper the label is embedded, summed with the timestep
embedding, and the sum c conditions every block.

Label ``num_classes`` is the null label for classifier-free guidance (tables have num_classes + 1
rows). The training loop replaces labels by it; the model itself does no label dropout.

The shared pieces (timestep/label embedding, self-attention) live here and the U-Net imports them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def check_positive_ints(cfg, names) -> None:
    for name in names:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{type(cfg).__name__}.{name} must be a positive int, got {v!r}")


def check_inputs(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, channels: int) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"x must have shape (N, {channels}, H, W), got {tuple(x.shape)}")
    n = x.shape[0]
    if t.shape != (n,) or y.shape != (n,):
        raise ValueError(f"t and y must have shape ({n},), got {tuple(t.shape)} and {tuple(y.shape)}")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(N,) timesteps -> (N, dim) [cos | sin] at geometric frequencies 1 .. 1/max_period (Transformer/DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return F.pad(torch.cat([torch.cos(args), torch.sin(args)], dim=1), (0, dim % 2))


class ConditionEmbedder(nn.Module):
    """c = MLP(sinusoid(t)) + E[y]: the label is combined with the timestep before entering the blocks."""

    def __init__(self, freq_dim: int, dim: int, num_classes: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(num_classes + 1, dim)  # last row: the null label (CFG)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim)) + self.label(y)


class SelfAttention(nn.Module):
    """Multi-head self-attention over (N, L, D) tokens with PyTorch's fused scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, l, d = x.shape
        q, k, v = self.qkv(x).view(n, l, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (n, heads, l, d / heads)
        return self.proj(out.transpose(1, 2).reshape(n, l, d))


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed MAE/DiT positions, (grid**2, dim) for row-major tokens: first half encodes the column, second the row."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij")

    def one_axis(pos):
        a = pos.reshape(-1, 1) * omega
        return torch.cat([a.sin(), a.cos()], dim=1)

    return torch.cat([one_axis(cols), one_axis(rows)], dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


@dataclass(frozen=True)
class DiTConfig:
    """Defaults are DiT-S/2 (33M parameters on 4x32x32 latents); input_size is the latent side."""

    in_channels: int = 4
    input_size: int = 8
    num_classes: int = 2
    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0

    def __post_init__(self):
        check_positive_ints(self, ("in_channels", "input_size", "num_classes", "patch_size", "hidden_size", "depth", "num_heads"))
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) or not self.mlp_ratio > 0:
            raise ValueError(f"DiTConfig.mlp_ratio must be a number > 0, got {self.mlp_ratio!r}")
        if self.input_size % self.patch_size:
            raise ValueError(f"DiTConfig.input_size {self.input_size} must be divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"DiTConfig.hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:  # sin and cos for each of the two axes
            raise ValueError(f"DiTConfig.hidden_size must be divisible by 4 for the 2-D sin-cos embedding, got {self.hidden_size}")

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size


class DiTBlock(nn.Module):
    """Pre-LN transformer block; c sets shift, scale and a residual gate for attention and MLP (adaLN-Zero)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)  # affine comes from c
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN (shift, scale; no gate) then a linear to patch*patch*C values per token."""

    def __init__(self, dim: int, patch: int, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * channels)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.x_embed = nn.Conv2d(cfg.in_channels, d, cfg.patch_size, stride=cfg.patch_size)
        # Not persistent: rebuilt from the config, so checkpoints do not carry a constant.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(d, cfg.grid_size)[None], persistent=False)
        self.cond = ConditionEmbedder(d, d, cfg.num_classes)
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final = FinalLayer(d, cfg.patch_size, cfg.in_channels)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embed.weight  # init the patch conv as the linear map it is
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embed.bias)
        nn.init.normal_(self.cond.label.weight, std=0.02)
        for i in (0, 2):
            nn.init.normal_(self.cond.mlp[i].weight, std=0.02)
        # adaLN-Zero: every residual branch and the output start at 0, so the net starts as eps = 0.
        for layer in [b.ada[-1] for b in self.blocks] + [self.final.ada[-1], self.final.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, h: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*C) tokens -> (N, C, H, W)."""
        n, g, p, c = h.shape[0], self.cfg.grid_size, self.cfg.patch_size, self.cfg.in_channels
        h = torch.einsum("nhwpqc->nchpwq", h.reshape(n, g, g, p, p, c))
        return h.reshape(n, c, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_inputs(x, t, y, self.cfg.in_channels)
        if x.shape[2:] != (self.cfg.input_size,) * 2:  # the positional table is built for one size
            raise ValueError(f"x must be {self.cfg.input_size}x{self.cfg.input_size}, got {tuple(x.shape[2:])}")
        h = self.x_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (N, L, D), row-major tokens
        c = self.cond(t, y)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final(h, c))
