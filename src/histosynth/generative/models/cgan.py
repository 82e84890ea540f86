"""Latent-to-image conditional GAN (Andrei & Ionescu 2025, Annals ASR Sci. Inf., §3.1).

Model code only. G: one-hot label ⊕ z (1500-d) -> linear projection -> reshape to a
``filters x s x s`` map -> 5 x2 up-samplings (128 filters, LeakyReLU 0.2; the paper's stride-2
4x4 transposed convs, or by default nearest x2 + 3x3 conv: ``CGANConfig.upsample``) -> 3x3 conv
to RGB + tanh. D: label broadcast as extra input channels -> 5 stride-2 4x4
conv blocks (LeakyReLU 0.2) -> flatten -> linear -> 1 logit (sigmoid/BCE applied in the loss).

Resolution rule: the paper's 5 doublings (``num_up``) give ``s = image_size / 32`` (4 at its
128 px). For sizes not divisible by 2**num_up, G works at ``ceil(image_size / 2**num_up) * 2**num_up``
and area-downsamples to ``image_size`` (a convex average, so the output stays in [-1, 1]); see ``CGANConfig``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F



@dataclass(frozen=True)
class CGANConfig:
    image_size: int = 128  # paper: NCT-CRC-HE-100K patches at 128 px (native 224 px, resized)
    # §3.2 and the abstract: 7 classes (BACK and ADI dropped); §3.1 lists 8 incl. ADI -> set per dataset
    num_classes: int = 7
    latent_dim: int = 1500  # paper
    filters: int = 128  # paper: every G deconv has 128 filters
    d_filters: int = 128  # paper silent on D width; mirror G ("symmetrically conditioned discriminator")
    kernel_size: int = 4  # paper: (4, 4) in G and D
    leaky_slope: float = 0.2  # paper (G; D's slope unstated, same value assumed)
    channels: int = 3  # RGB
    # Paper silent. None = He init (std = gain / sqrt(fan-in), the fan-in of a stride-2
    # transposed conv being in * (k / 2)^2): activations keep their scale through the stack.
    # DCGAN's N(0, 0.02) (init_std: 0.02) shrinks them ~3x per deconv without normalisation: at
    # 128 filters and 128 px the output std at init is ~1e-3, D wins within ~400 steps and G
    # freezes (docs/benchmarks.md, "Generator convergence").
    init_std: float | None = None
    # Paper: 5 deconvolutions in G and 5 conv blocks in D, i.e. a 4x4 first map at its 128 px.
    # At 32 px five would start from 1x1; num_up: 3 keeps the paper's 4x4 start there.
    num_up: int = 5
    # Paper: stride-2 transposed convs ("deconv"). They give the four pixel parities different
    # weights: on the demo tissue at 1 000 steps that G collapsed to one checkered grid (FID
    # 5.4x real vs real, recall 0) and at 3 000 kept a diagonal checkerboard. "resize" (nearest
    # x2, then a 3x3 conv; Odena et al. 2016) drew varied tissue colours at 1 000 steps (2.3x,
    # recall 0.37). The default is the one that trains (docs/benchmarks.md).
    upsample: str = "resize"
    # optimisation defaults (used by the training loop, kept here so one config carries the paper)
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999  # paper gives only beta1; Adam default
    batch_size: int = 125

    def __post_init__(self):
        ints = {"image_size", "num_classes", "latent_dim", "filters", "d_filters", "kernel_size", "channels", "batch_size",
                "num_up"}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "upsample":
                continue
            if f.name in ints:
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError(f"CGANConfig.{f.name} must be a positive int, got {v!r}")
            elif f.name == "init_std" and v is None:
                continue
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"CGANConfig.{f.name} must be a finite number, got {v!r}")
        if self.image_size < 2**self.num_up:
            raise ValueError(f"CGANConfig.image_size must be >= {2**self.num_up} ({self.num_up} stride-2 layers, "
                             f"num_up), got {self.image_size}")
        if self.upsample not in ("deconv", "resize"):
            raise ValueError(f"CGANConfig.upsample must be deconv or resize, got {self.upsample!r}")
        if self.num_classes < 2:
            raise ValueError(f"CGANConfig.num_classes must be >= 2 for a conditional GAN, got {self.num_classes}")
        if self.kernel_size % 2:
            # even k with padding (k-2)/2 gives exact x2 / /2 resampling; odd k would break it
            raise ValueError(f"CGANConfig.kernel_size must be even, got {self.kernel_size}")
        if not 0 <= self.leaky_slope < 1:
            raise ValueError(f"CGANConfig.leaky_slope must be in [0, 1), got {self.leaky_slope}")
        if (self.init_std is not None and self.init_std <= 0) or self.lr <= 0:
            raise ValueError(f"CGANConfig.{'lr' if self.lr <= 0 else 'init_std'} must be > 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"CGANConfig.{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def start_size(self) -> int:
        """Side of G's first feature map: image_size / 2**num_up, rounded up when not divisible."""
        return -(-self.image_size // 2**self.num_up)

    @property
    def native_size(self) -> int:
        """Size G's up-sampling stack produces before the (optional) downsample to image_size."""
        return self.start_size * 2**self.num_up


def _init(module: nn.Module, std: float | None, slope: float) -> None:
    """N(0, std) weights, or He-scaled ones when std is None; zero biases."""
    gain = math.sqrt(2.0 / (1.0 + slope**2))  # LeakyReLU (Kaiming He et al. 2015)
    for m in module.modules():
        if isinstance(m, nn.Linear):
            fan_in = m.in_features
        elif isinstance(m, nn.ConvTranspose2d):  # each output pixel sums in * (k / stride)^2 inputs
            fan_in = m.in_channels * (m.kernel_size[0] // m.stride[0]) * (m.kernel_size[1] // m.stride[1])
        elif isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        else:
            continue
        nn.init.normal_(m.weight, 0.0, gain / math.sqrt(fan_in) if std is None else std)
        nn.init.zeros_(m.bias)


def _labels(y: torch.Tensor | int, n: int, num_classes: int, device: torch.device) -> torch.Tensor:
    y = torch.as_tensor(y, device=device, dtype=torch.long)
    if y.dim() == 0:
        y = y.expand(n)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(y.shape)}")
    return y


class Generator(nn.Module):
    def __init__(self, cfg: CGANConfig):
        super().__init__()
        self.cfg = cfg
        k, s, f = cfg.kernel_size, cfg.start_size, cfg.filters
        # Paper: "concatenate latent and labels, reshape". A plain reshape of a 1507-d vector is not a
        # feature map, so (as in its Fig. 2 / intro: "projected into a small multi-channel feature map")
        # a linear layer projects to f*s*s. One-hot labels: an embedding before a linear layer adds nothing.
        self.project = nn.Linear(cfg.latent_dim + cfg.num_classes, f * s * s)
        layers: list[nn.Module] = [nn.LeakyReLU(cfg.leaky_slope)]  # projection is linear; keep it from collapsing into deconv 1
        for _ in range(cfg.num_up):
            if cfg.upsample == "deconv":
                layers.append(nn.ConvTranspose2d(f, f, k, stride=2, padding=(k - 2) // 2))
            else:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(f, f, 3, padding=1)]
            layers.append(nn.LeakyReLU(cfg.leaky_slope))
        # Paper: all 5 deconvs have 128 filters, then "the last convolutional layer" uses tanh -> a separate
        # RGB conv (3x3 'same', as in the Keras cGAN recipe this architecture follows).
        layers += [nn.Conv2d(f, cfg.channels, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _init(self, cfg.init_std, cfg.leaky_slope)

    @property
    def device(self) -> torch.device:
        return self.project.weight.device

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        onehot = F.one_hot(y, cfg.num_classes).to(z.dtype)
        h = self.project(torch.cat([z, onehot], dim=1)).view(-1, cfg.filters, cfg.start_size, cfg.start_size)
        x = self.net(h)
        if cfg.native_size != cfg.image_size:
            # area = box average, non-negative weights: stays in [-1, 1] and anti-aliases
            x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="area")
        return x

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images of class(es) y (int or (n,) tensor); z drawn on the generator's device for reproducibility."""
        zdev = generator.device if generator is not None else self.device
        z = torch.randn(n, self.cfg.latent_dim, generator=generator, device=zdev).to(self.device)
        return self(z, _labels(y, n, self.cfg.num_classes, self.device))


class Discriminator(nn.Module):
    def __init__(self, cfg: CGANConfig):
        super().__init__()
        self.cfg = cfg
        k, f = cfg.kernel_size, cfg.d_filters
        # Paper is silent on how D sees the label: standard conv-cGAN choice, one-hot broadcast as extra
        # input channels, so the very first filters can already judge class-consistent colour/texture.
        cin = cfg.channels + cfg.num_classes
        layers: list[nn.Module] = []
        for i in range(cfg.num_up):
            layers += [nn.Conv2d(cin if i == 0 else f, f, k, stride=2, padding=(k - 2) // 2), nn.LeakyReLU(cfg.leaky_slope)]
        self.net = nn.Sequential(*layers)
        side = cfg.image_size
        for _ in range(cfg.num_up):  # conv arithmetic: floor((n + 2p - k) / 2) + 1 == n // 2 for even k
            side //= 2
        self.head = nn.Linear(f * side * side, 1)  # "flattened and then fed into a sigmoid output"
        _init(self, cfg.init_std, cfg.leaky_slope)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        lab = F.one_hot(y, self.cfg.num_classes).to(x.dtype)[:, :, None, None].expand(b, -1, h, w)
        return self.head(self.net(torch.cat([x, lab], dim=1)).flatten(1)).squeeze(1)


def build_cgan(cfg: CGANConfig) -> tuple[Generator, Discriminator]:
    return Generator(cfg), Discriminator(cfg)


def cgan_losses(D: Discriminator, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d_loss, g_loss): BCE-with-logits (the paper's sigmoid + cross-entropy, numerically stable).

    d_loss = BCE(D(real), 1) + BCE(D(fake.detach()), 0), summed as with separate real/fake D updates.
    g_loss = BCE(D(fake), 1): non-saturating. Real and fake share labels y. Both losses use the
    current D, so backprop both before any optimiser step, each into its own net only, e.g.
    ``d_loss.backward(inputs=list(D.parameters())); g_loss.backward(inputs=list(G.parameters()))``
    (stepping D first would invalidate g_loss's graph: recompute it after D's step instead).
    """
    bce = F.binary_cross_entropy_with_logits
    lr, lf = D(real, y), D(fake.detach(), y)
    d_loss = bce(lr, torch.ones_like(lr)) + bce(lf, torch.zeros_like(lf))
    lg = D(fake, y)
    g_loss = bce(lg, torch.ones_like(lg))
    return d_loss, g_loss
