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
contrast and saturation commute exactly (each is linear and keeps the others'
grey reference: scaling an image scales its luma, a saturation blend keeps its
mean luma), so the order only matters through clamping at 1 and through the hue
shift, which at |d| <= 0.04 turns moves luma little. A fixed order keeps the
batch one sequence of in-place elementwise ops instead of four gather/scatter
rounds of per-image orders.

Randomness. All draws are one (B, 7) uniform tensor taken from `generator` on
the generator's own device, then moved to the batch's device. Pass a CPU
generator (as BatchIterator does): the stream is then identical on CPU and CUDA
and nothing waits on the GPU.

Speed (CPU). Float arithmetic with float 0/1 masks instead of bool where(), and
in-place ops on one working tensor: fresh multi-MB allocations and bool kernels
dominate the cost of such small elementwise ops otherwise.
"""

from __future__ import annotations

import functools
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
    luma = torch.tensor(LUMA, device=x.device, dtype=x.dtype)
    return (luma @ x.flatten(2)).view(len(x), 1, *x.shape[2:])


# The colour ops below modify x in place and return it.

def adjust_brightness_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return x.mul_(_per_image(factor)).clamp_(0, 1)


def adjust_contrast_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    luma = torch.tensor(LUMA, device=x.device, dtype=x.dtype)
    mean = x.mean(dim=(2, 3)) @ luma  # mean of the grey image, per image
    return x.mul_(_per_image(factor)).add_(_per_image(mean * (1 - factor))).clamp_(0, 1)


def adjust_saturation_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    gray = grayscale(x).mul_(_per_image(1 - factor))
    return x.mul_(_per_image(factor)).add_(gray).clamp_(0, 1)


def adjust_hue_(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by `shift` turns per image: torchvision's RGB -> HSV -> RGB, in closed form.

    A hue rotation keeps V = max(r, g, b) and S, hence min(r, g, b): only the hue
    sextant position h6 = 6h moves, so HSV is never built as a tensor.
    """
    r, g, b = x.unbind(1)
    # One workspace of six planes: a single allocation that malloc can recycle,
    # where a dozen separate temporaries get unmapped and page-faulted back in
    # on every call (that costs more than the arithmetic).
    maxc, delta, is_r, is_g, h6, tmp = torch.empty((6,) + r.shape, device=x.device, dtype=x.dtype)
    torch.amax(x, 1, out=maxc)
    torch.amin(x, 1, out=delta).neg_().add_(maxc)
    # Which channel is the max (r wins ties, then g), as float masks: float
    # arithmetic vectorises where bool where() does not.
    torch.eq(maxc, r, out=is_r)
    torch.eq(maxc, g, out=is_g).addcmul_(is_g, is_r, value=-1)
    # h6 in [-1, 5): (g-b)/d if r is max, 2 + (b-r)/d if g, 4 + (r-g)/d if b.
    torch.sub(g, b, out=h6).mul_(is_r)
    h6.addcmul_(is_g, torch.sub(b, r, out=tmp).add_(delta, alpha=2))
    is_r.add_(is_g).neg_().add_(1)  # is_r is now "b is max"
    h6.addcmul_(is_r, torch.sub(r, g, out=tmp).add_(delta, alpha=4))
    h6.div_(torch.eq(delta, 0, out=tmp).add_(delta))  # grey pixels: 0 / 1
    h6.add_(6 * shift.view(-1, 1, 1))
    h6.sub_(torch.div(h6, 6, out=tmp).floor_().mul_(6))  # now in [0, 6)
    # Back to RGB, into x (no longer read): channel n (5, 3, 1 for r, g, b) is
    # max - delta * clamp(min(k, 4 - k), 0, 1), k = (h6 + n) mod 6, which is
    # min + delta * clamp(tri - 1, 0, 1) with tri = ||h6 + n - 5| - 3| the
    # distance of k - 2 to the nearest multiple of 6 (h6 + n - 2 lies in [-3, 9]).
    minc = maxc.sub_(delta)
    for c, n in enumerate((5.0, 3.0, 1.0)):
        tri = torch.add(h6, n - 5, out=tmp).abs_().sub_(3).abs_()
        torch.addcmul(minc, tri.sub_(1).clamp_(0, 1), delta, out=x[:, c])
    return x


@functools.lru_cache(maxsize=16)
def _dihedral_maps(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(16, h*w) source pixel of every output pixel, for index hflip*8 + vflip*4 + k.

    Built by applying torch.flip/rot90 themselves to a grid of pixel indices, so
    the gather below reproduces them exactly.
    """
    grid = torch.arange(h * w, device=device).view(h, w)
    maps = []
    for hflip in (0, 1):
        for vflip in (0, 1):
            g = grid.flip(-1) if hflip else grid
            g = g.flip(-2) if vflip else g
            maps += [torch.rot90(g, k, dims=(-2, -1)).flatten() for k in range(4)]
    return torch.stack(maps)


def flip_rotate(x: torch.Tensor, hflip: torch.Tensor, vflip: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per image: flip W if hflip, flip H if vflip, then torch.rot90 by k quarter turns.

    hflip, vflip: bool (B,); k: int (B,) in [0, 4). One gather for the whole
    batch; returns a new tensor.
    """
    b, c, h, w = x.shape
    if h != w and (k % 2).any():
        raise ValueError(f"rot90 needs square images, got {h}x{w}")
    which = (hflip.long() * 8 + vflip.long() * 4 + k % 4).to(x.device)
    src = _dihedral_maps(h, w, x.device)[which]  # (B, h*w)
    return x.flatten(2).gather(2, src.unsqueeze(1).expand(b, c, h * w)).view(b, c, h, w)


@dataclass(frozen=True)
class AugmentDraws:
    """One batch's per-image random parameters; colour factors are None when disabled."""
    hflip: torch.Tensor  # bool (B,)
    vflip: torch.Tensor  # bool (B,)
    k: torch.Tensor  # int64 (B,), quarter turns
    brightness: torch.Tensor | None  # (B,) factors
    contrast: torch.Tensor | None
    saturation: torch.Tensor | None
    hue: torch.Tensor | None  # (B,) shifts in turns


def draw(n: int, cfg: AugmentConfig, generator: torch.Generator) -> AugmentDraws:
    """Per-image parameters for n images, on the generator's device."""
    # Every parameter is drawn, enabled or not, so that changing one setting
    # does not reshuffle the others' draws.
    u = torch.rand(n, 7, generator=generator, device=generator.device)

    def factor(u, spread):  # U[max(0, 1-spread), 1+spread], as ColorJitter
        lo = max(0.0, 1 - spread)
        return lo + (1 + spread - lo) * u if spread else None

    return AugmentDraws(
        hflip=(u[:, 0] < 0.5) & cfg.hflip,
        vflip=(u[:, 1] < 0.5) & cfg.vflip,
        k=(u[:, 2] * 4).long().clamp_(max=3) * cfg.rot90,
        brightness=factor(u[:, 3], cfg.brightness),
        contrast=factor(u[:, 4], cfg.contrast),
        saturation=factor(u[:, 5], cfg.saturation),
        hue=cfg.hue * (2 * u[:, 6] - 1) if cfg.hue else None,
    )


def apply(x: torch.Tensor, d: AugmentDraws) -> torch.Tensor:
    """Flip, rotate, then brightness, contrast, saturation, hue; returns a new tensor."""
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"expected float (B, 3, H, W) images, got {x.dtype} {tuple(x.shape)}")
    x = flip_rotate(x, d.hflip, d.vflip, d.k) if (d.hflip | d.vflip | (d.k > 0)).any() else x.clone()
    for op, factor in ((adjust_brightness_, d.brightness), (adjust_contrast_, d.contrast),
                       (adjust_saturation_, d.saturation), (adjust_hue_, d.hue)):
        if factor is not None:
            op(x, factor.to(device=x.device, dtype=x.dtype))
    return x.clamp_(0, 1)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment float (B, 3, H, W) images in [0, 1], each with its own draws; returns a new tensor."""
    if cfg.rot90 and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rot90 needs square images, got {tuple(x.shape[-2:])}")
    return apply(x, draw(len(x), cfg, generator))
