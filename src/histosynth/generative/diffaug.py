"""Differentiable augmentation for GAN critics (Zhao, Liu, Lin, Zhu & Han, "Differentiable
Augmentation for Data-Efficient GAN Training", NeurIPS 2020).

The same random transformations are applied to real and to generated images before every
critic evaluation (critic step and generator step), and they are differentiable, so the
generator still gets gradients and learns the un-augmented distribution. On small training
sets the critic otherwise memorises the few real images within a few hundred steps and the
generator collapses. Images are (N, C, H, W) in [-1, 1]; each image draws its own parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def color(x: torch.Tensor) -> torch.Tensor:
    """Random brightness (+-0.5), saturation (x0-2) and contrast (x0.5-1.5), each per image."""
    n = x.shape[0]
    x = x + (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + mean


def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ratio x its side in each direction, zero-filling what enters."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (n, 1, 1), device=x.device)
    rows = torch.arange(h, device=x.device)[None, :, None] + sh - dy  # (n, h, 1) into the padded image
    cols = torch.arange(w, device=x.device)[None, None, :] + sw - dx  # (n, 1, w)
    padded = F.pad(x, (sw, sw, sh, sh))
    return padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of ratio x the side per image, centred anywhere (clipped at the edges)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
    yy = torch.arange(h, device=x.device)[None, :, None]
    xx = torch.arange(w, device=x.device)[None, None, :]
    inside = (yy >= cy - ch // 2) & (yy < cy - ch // 2 + ch) & (xx >= cx - cw // 2) & (xx < cx - cw // 2 + cw)
    return x * (~inside)[:, None].to(x.dtype)


TRANSFORMS = {"color": color, "translation": translation, "cutout": cutout}


def check_policy(owner: str, policy) -> tuple:
    """`policy` as a tuple (YAML gives lists), or a ValueError naming `owner` (e.g. "ViTGANConfig.diffaug")."""
    if isinstance(policy, list):
        policy = tuple(policy)
    if not isinstance(policy, tuple) or not set(policy) <= set(POLICIES) or len(set(policy)) != len(policy):
        raise ValueError(f"{owner} must be a list of distinct names from {list(POLICIES)}, got {policy!r}")
    return policy


def augment(x: torch.Tensor, policy) -> torch.Tensor:
    """x through each transform named in `policy` (a subset of POLICIES, applied in that order)."""
    for name in policy:
        x = TRANSFORMS[name](x)
    return x
