"""Batched "traditional" augmentation: dihedral flips/rotations and colour jitter.

Whole batches are augmented as tensors on their own device (no PIL, no loop over
images), yet every image gets its own random draws. The colour maths is
torchvision's ColorJitter, per image:

  brightness  x * b                                   b ~ U[max(0, 1-B), 1+B]
  contrast    c * x + (1-c) * mean(gray(x))           c ~ U[max(0, 1-C), 1+C]
  saturation  s * x + (1-s) * gray(x)                 s ~ U[max(0, 1-S), 1+S]
  hue         RGB -> HSV, h += d (mod 1), -> RGB      d ~ U[-Hue, Hue]

each clamped to [0, 1], with gray() torchvision's luma (0.2989, 0.587, 0.114).

Order. ColorJitter shuffles the four ops per call; we apply them in the fixed
order brightness, contrast, saturation, hue. Without the clamps, brightness,
contrast and saturation commute exactly (each is linear and they preserve each
other's grey reference: the mean luma of a saturation-blended image is unchanged,
scaling an image scales its luma), so the order only matters through clamping at
1 and through the hue shift, which at |d| <= 0.04 moves the luma little. A fixed
order keeps the batch one pass of elementwise ops instead of four
gather/scatter rounds.

Randomness. All draws are one (B, 7) uniform tensor taken from `generator` on
the generator's own device, then moved to the batch's device. Pass a CPU
generator (as BatchIterator does): the stream is then identical on CPU and CUDA,
and grouping images by rotation needs no device sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma; 0.2989, not 0.299).
LUMA = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True  # random multiple of 90 degrees (H&E has no canonical orientation)
    brightness: float = 0.25  # factor ~ U[1-b, 1+b], as torchvision ColorJitter
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.04  # shift ~ U[-h, h] in hue turns

    def __post_init__(self):
        for name in ("brightness", "contrast", "saturation", "hue"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"augmentation {name} must be >= 0, got {getattr(self, name)}")
        if self.hue > 0.5:
            raise ValueError(f"augmentation hue must be <= 0.5 (half a turn), got {self.hue}")


def _per_image(factor: torch.Tensor) -> torch.Tensor:
    return factor.reshape(-1, 1, 1, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    r, g, b = x.unbind(dim=1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    ratio = _per_image(ratio)
    return (x * ratio + other * (1 - ratio)).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * _per_image(factor)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x).mean(dim=(-2, -1), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by `shift` turns per image; exact HSV round trip, without building HSV.

    A hue rotation keeps V = max(r, g, b) and S, hence min(r, g, b) too, so only
    the hue sextant position h6 = 6h is needed. The way back is the closed form
    channel_n = max - (max - min) * clamp(min(k, 4 - k), 0, 1), k = (n + h6) mod 6,
    n = 5, 3, 1 for r, g, b: the same piecewise-linear map as torchvision's
    sextant table, without its gather.
    """
    r, g, b = x.unbind(dim=1)
    minc, maxc = torch.aminmax(x, dim=1)
    delta = maxc - minc
    # Grey pixels (delta = 0) have no hue; any finite h6 gives back max there.
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc.unsqueeze(1) - x).div_(safe.unsqueeze(1)).unbind(dim=1)
    h6 = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2 + rc - bc, 4 + gc - rc))
    h6 = h6 + 6 * shift.reshape(-1, 1, 1)
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + h6.unsqueeze(1), 6)
    ramp = torch.minimum(k, 4 - k).clamp_(0, 1)
    return maxc.unsqueeze(1) - delta.unsqueeze(1) * ramp


def flip_rotate(x: torch.Tensor, hflip: torch.Tensor, vflip: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per image: flip W if hflip, flip H if vflip, then torch.rot90 by k quarter turns.

    hflip, vflip: bool (B,); k: int (B,) in [0, 4), on any device. Rotations go
    by groups of equal k (three torch.rot90 calls), not image by image.
    """
    if hflip.any():
        x = torch.where(_per_image(hflip.to(x.device)), x.flip(-1), x)
    if vflip.any():
        x = torch.where(_per_image(vflip.to(x.device)), x.flip(-2), x)
    if (k % 4).any():
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"rot90 needs square images, got {tuple(x.shape[-2:])}")
        x = x.clone()
        for quarter in (1, 2, 3):
            rows = torch.nonzero(k % 4 == quarter).flatten().to(x.device)
            if len(rows):
                x[rows] = torch.rot90(x[rows], quarter, dims=(-2, -1))
    return x


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment float (B, 3, H, W) images in [0, 1], each with its own draws; returns a new tensor."""
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"expected float (B, 3, H, W) images, got {x.dtype} {tuple(x.shape)}")
    if cfg.rot90 and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rot90 needs square images, got {tuple(x.shape[-2:])}")
    # One draw of every parameter, enabled or not, so that changing one setting
    # does not reshuffle the others' draws.
    u = torch.rand(len(x), 7, generator=generator, device=generator.device)
    geometry, colour = u[:, :3], u[:, 3:].to(device=x.device, dtype=x.dtype)

    hflip = (geometry[:, 0] < 0.5) & cfg.hflip
    vflip = (geometry[:, 1] < 0.5) & cfg.vflip
    k = (geometry[:, 2] * 4).long().clamp_(max=3) * cfg.rot90
    x = flip_rotate(x, hflip, vflip, k)

    def factor(u, spread):  # U[max(0, 1-spread), 1+spread], as ColorJitter
        lo = max(0.0, 1 - spread)
        return lo + (1 + spread - lo) * u

    if cfg.brightness:
        x = adjust_brightness(x, factor(colour[:, 0], cfg.brightness))
    if cfg.contrast:
        x = adjust_contrast(x, factor(colour[:, 1], cfg.contrast))
    if cfg.saturation:
        x = adjust_saturation(x, factor(colour[:, 2], cfg.saturation))
    if cfg.hue:
        x = adjust_hue(x, cfg.hue * (2 * colour[:, 3] - 1))
    return x.clamp(0, 1)
