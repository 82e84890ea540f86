"""HistoGAN: multi-stage class-conditional GAN (Xue et al. 2021, MedIA, §3.1, §4.2.1).

Model code only. The generator grows an image coarse to fine over S stages
(StackGAN++-style); every stage emits an RGB image, and every stage has its own
WGAN-GP critic. Conditioning is class-conditional batch norm (CBN) in both G
and D; the critics are spectral-normalised and end in minibatch discrimination.

Resolution rule: stage k (1-based) works at ``image_size / 2**(S - k)`` with
``S = num_stages(image_size)``: 2 stages below 128 px (PCam 96 -> 48, 96),
3 stages from 128 px up (128 -> 32, 64, 128; 224 -> 56, 112, 224).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from histosynth.generative.diffaug import check_policy


def num_stages(image_size: int) -> int:
    """2 stages below 128 px (the paper's 96 px PCam), 3 from 128 px up (its 256x128 cervical patches)."""
    return 3 if image_size >= 128 else 2


def stage_sizes(image_size: int) -> list[int]:
    s = num_stages(image_size)
    if image_size % 2 ** (s - 1):
        raise ValueError(f"image_size {image_size} must be divisible by {2 ** (s - 1)} for {s} stages")
    return [image_size >> (s - k) for k in range(1, s + 1)]


@dataclass(frozen=True)
class HistoGANConfig:
    image_size: int = 96
    num_classes: int = 2
    z_dim: int = 128
    g_channels: int = 64  # channels at the end of stage I (StackGAN++ ngf); halved by every later stage
    d_channels: int = 64  # first critic layer (StackGAN++ ndf); doubled per down-sampling layer
    d_max_mult: int = 8  # critic width cap: d_channels * 8
    g_up_blocks: int = 4  # paper: stage I has 4 up-sampling blocks (fewer if the stage-I size is not divisible)
    g_res_blocks: int = 2  # residual blocks before each later stage (StackGAN++ R_NUM)
    mbd_kernels: int = 100  # minibatch discrimination B (Salimans et al. 2016 code)
    mbd_kernel_dim: int = 5  # minibatch discrimination C
    d_projection: bool = False  # paper conditions D by CBN only; projection term (Miyato & Koyama 2018) is opt-in
    attn_pool: bool = True  # 2x2 max-pool keys/values as in the official SAGAN code: 4x less attention memory
    # §4.2.1: "the parameter delta for WGAN-GP loss is set to 50". The penalty weight (lambda = 10
    # in Gulrajani et al.) is WGAN-GP's only loss parameter, so delta reads as lambda = 50; with
    # it (and the paper's lr 2e-4) the demo HistoGAN made framed colour noise, with Gulrajani
    # et al.'s 10 (and their Adam lr 1e-4, betas (0, 0.9)) tissue colours. 50 stays one switch away.
    gp_weight: float = 10.0
    # Critic normalisation. The paper uses class-conditional batch norm ("batch"); with WGAN-GP
    # that collapsed to one flat colour on real tissue in our checks (docs/benchmarks.md, "GAN
    # convergence"), while the per-sample conditional layer norm that WGAN-GP's authors
    # recommend ("layer") learned colour and variety. The default is the one that trains.
    d_norm: str = "layer"
    # Padding of the generator's 3x3 convs. With zeros, every border pixel sees a constant the
    # interior does not, and the samples carried a frame at each stage's scale (nested squares)
    # that the WGAN-GP critic did not remove in 2 500 steps; "reflect" leaves no such constant.
    g_padding: str = "reflect"
    # Differentiable augmentation of what every stage's critic sees (DiffAugment, Zhao et al.
    # 2020; histosynth.generative.diffaug), a subset of ("color", "translation", "cutout"). The
    # paper has none (empty).
    diffaug: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "diffaug", check_policy("HistoGANConfig.diffaug", self.diffaug))
        if self.d_norm not in CRITIC_NORMS:
            raise ValueError(f"HistoGANConfig.d_norm must be one of {sorted(CRITIC_NORMS)}, got {self.d_norm!r}")
        if self.g_padding not in ("zeros", "reflect", "replicate"):
            raise ValueError(f"HistoGANConfig.g_padding must be zeros, reflect or replicate, got {self.g_padding!r}")

    @property
    def num_stages(self) -> int:
        return num_stages(self.image_size)

    @property
    def stage_sizes(self) -> list[int]:
        return stage_sizes(self.image_size)


# ----------------------------------------------------------------------------- layers


class ConditionalBatchNorm2d(nn.Module):
    """BN without affine, then a per-class gain and bias (De Vries et al. 2017)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gamma = nn.Embedding(num_classes, channels)
        self.beta = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gamma.weight)  # start as plain BN; classes diverge through training
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.gamma(y)[:, :, None, None] + self.beta(y)[:, :, None, None]


class ConditionalLayerNorm2d(ConditionalBatchNorm2d):
    """Per-sample normalisation over (C, H, W), then a per-class gain and bias.

    The critic variant for WGAN-GP (Gulrajani et al. 2017 §4: the penalty is per
    sample, and batch norm makes a sample's score depend on the rest of its batch).
    """

    def __init__(self, channels: int, num_classes: int):
        super().__init__(channels, num_classes)
        self.bn = nn.GroupNorm(1, channels, affine=False)


class SelfAttention(nn.Module):
    """SAGAN self-attention (paper eqs. 2-3); gamma starts at 0 so the block is the identity at init."""

    def __init__(self, channels: int, sn: bool = False, pool: bool = True):
        super().__init__()
        wrap = spectral_norm if sn else (lambda m: m)
        self.q = wrap(nn.Conv2d(channels, max(channels // 8, 1), 1, bias=False))
        self.k = wrap(nn.Conv2d(channels, max(channels // 8, 1), 1, bias=False))
        self.v = wrap(nn.Conv2d(channels, max(channels // 2, 1), 1, bias=False))
        self.o = wrap(nn.Conv2d(max(channels // 2, 1), channels, 1, bias=False))
        self.gamma = nn.Parameter(torch.zeros(()))
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        q = self.q(x).flatten(2)  # (n, c/8, hw)
        k, v = self.k(x), self.v(x)
        if self.pool and h % 2 == 0 and w % 2 == 0:
            k, v = F.max_pool2d(k, 2), F.max_pool2d(v, 2)
        # Explicit matmul/softmax rather than scaled_dot_product_attention: fused CUDA
        # kernels are not twice differentiable, and the critics' GP needs double backward.
        attn = torch.softmax(q.transpose(1, 2) @ k.flatten(2), dim=-1)  # (n, hw, hw')
        out = (v.flatten(2) @ attn.transpose(1, 2)).view(n, -1, h, w)
        return x + self.gamma * self.o(out)


class MinibatchDiscrimination(nn.Module):
    """Salimans et al. 2016 §3.2: o(x_i)_b = sum_{j!=i} exp(-||M_i,b - M_j,b||_1), M = f(x) T.

    T is a bias-free linear (A -> B*C) so it can carry spectral norm like the other critic layers.
    """

    def __init__(self, in_features: int, kernels: int, kernel_dim: int):
        super().__init__()
        self.t = spectral_norm(nn.Linear(in_features, kernels * kernel_dim, bias=False))
        self.kernels, self.kernel_dim = kernels, kernel_dim

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        m = self.t(f).view(-1, self.kernels, self.kernel_dim)  # (n, B, C)
        l1 = (m[:, None] - m[None]).abs().sum(-1)  # (n, n, B)
        o = torch.exp(-l1).sum(1) - 1.0  # drop j == i (exp(0) = 1, zero gradient)
        return torch.cat([f, o], dim=1)


class UpBlock(nn.Module):
    """Bilinear x2 upsample -> 3x3 conv -> CBN -> ReLU (paper §4.2.1)."""

    def __init__(self, cin: int, cout: int, num_classes: int, padding: str):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, padding_mode=padding, bias=False)  # bias is cancelled by BN
        self.bn = ConditionalBatchNorm2d(cout, num_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return F.relu(self.bn(self.conv(x), y))


class ResBlock(nn.Module):
    """conv-CBN-ReLU-conv-CBN + identity, the StackGAN++ block with CBN in place of BN."""

    def __init__(self, channels: int, num_classes: int, padding: str):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode=padding, bias=False)
        self.bn1 = ConditionalBatchNorm2d(channels, num_classes)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode=padding, bias=False)
        self.bn2 = ConditionalBatchNorm2d(channels, num_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x), y))
        return x + self.bn2(self.conv2(h), y)


class ToRGB(nn.Module):
    def __init__(self, channels: int, padding: str):
        super().__init__()
        self.conv = nn.Conv2d(channels, 3, 3, padding=1, padding_mode=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x))


# ----------------------------------------------------------------------------- generator


class Generator(nn.Module):
    """G(z, y) -> [stage-I image, ..., final image], coarse to fine, each in [-1, 1]."""

    def __init__(self, cfg: HistoGANConfig):
        super().__init__()
        self.cfg = cfg
        sizes = cfg.stage_sizes
        # Stage I: as many x2 blocks (<= 4) as its size allows, starting from an s0 x s0 map.
        n_up = 0
        while n_up < cfg.g_up_blocks and (sizes[0] >> n_up) % 2 == 0:
            n_up += 1
        self.s0 = sizes[0] >> n_up
        c = cfg.g_channels * 2**n_up
        # z ⊕ one-hot(y) as a 1x1 map; a transposed conv with an s0 kernel embeds it to s0 x s0.
        self.embed = nn.ConvTranspose2d(cfg.z_dim + cfg.num_classes, c, self.s0, bias=False)
        self.embed_bn = ConditionalBatchNorm2d(c, cfg.num_classes)
        self.stage1 = nn.ModuleList()
        for _ in range(n_up):
            self.stage1.append(UpBlock(c, c // 2, cfg.num_classes, cfg.g_padding))
            c //= 2
        self.attn = SelfAttention(c, pool=cfg.attn_pool)  # after stage I only (paper Fig. 3)
        self.to_rgb = nn.ModuleList([ToRGB(c, cfg.g_padding)])
        # Later stages refine the previous stage's features (no new noise): residual blocks, then one x2 block.
        self.res = nn.ModuleList()
        self.up = nn.ModuleList()
        for _ in sizes[1:]:
            self.res.append(nn.ModuleList([ResBlock(c, cfg.num_classes, cfg.g_padding) for _ in range(cfg.g_res_blocks)]))
            self.up.append(UpBlock(c, max(c // 2, 1), cfg.num_classes, cfg.g_padding))
            c = max(c // 2, 1)
            self.to_rgb.append(ToRGB(c, cfg.g_padding))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        onehot = F.one_hot(y, self.cfg.num_classes).to(z.dtype)
        h = torch.cat([z, onehot], dim=1)[:, :, None, None]
        h = F.relu(self.embed_bn(self.embed(h), y))
        for block in self.stage1:
            h = block(h, y)
        h = self.attn(h)
        images = [self.to_rgb[0](h)]
        for res, up, to_rgb in zip(self.res, self.up, self.to_rgb[1:]):
            for block in res:
                h = block(h, y)
            h = up(h, y)
            images.append(to_rgb(h))
        return images

    @torch.no_grad()
    def sample(self, n: int, y: int | torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """n samples of class(es) y; leaves train/eval mode to the caller (eval uses BN running stats)."""
        device = next(self.parameters()).device
        y = torch.as_tensor(y, dtype=torch.long, device=device)
        y = y.expand(n) if y.dim() == 0 else y
        # Draw on the torch.Generator's device (it may be CPU while the model is on CUDA), then move.
        z = torch.randn(n, self.cfg.z_dim, generator=generator, device=generator.device if generator else device)
        return self(z.to(device), y)


# ----------------------------------------------------------------------------- discriminator


CRITIC_NORMS = {"batch": ConditionalBatchNorm2d, "layer": ConditionalLayerNorm2d}


class Discriminator(nn.Module):
    """WGAN-GP critic for one stage: D(x, y) -> (n,) unbounded scores (no sigmoid).

    4x4 stride-2 SN convs + CBN (none after the first) + LeakyReLU until the map is <= 4 px (or odd), self-attention at
    the first map of side <= 32, then 3x3 SN conv + CBN + LeakyReLU, flatten, minibatch
    discrimination and an SN linear. Optional projection term <embed(y), features>.
    """

    def __init__(self, image_size: int, cfg: HistoGANConfig):
        super().__init__()
        nc, norm = cfg.num_classes, CRITIC_NORMS[cfg.d_norm]
        self.convs, self.bns, self.attn_at = nn.ModuleList(), nn.ModuleList(), None
        cin, res, i = 3, image_size, 0
        while res > 4 and res % 2 == 0:
            cout = cfg.d_channels * min(2**i, cfg.d_max_mult)
            self.convs.append(spectral_norm(nn.Conv2d(cin, cout, 4, 2, 1)))
            if i > 0:  # not after the first conv: see forward()
                self.bns.append(norm(cout, nc))
            cin, res, i = cout, res // 2, i + 1
            if self.attn_at is None and res <= 32:
                self.attn_at, attn_ch = i - 1, cout
        if self.attn_at is None:  # no down-sampling reached <= 32 px: attend on the last map (-1: the input)
            self.attn_at, attn_ch = len(self.convs) - 1, cin
        self.attn = SelfAttention(attn_ch, sn=True, pool=cfg.attn_pool)
        self.conv_out = spectral_norm(nn.Conv2d(cin, cin, 3, padding=1))
        self.bn_out = norm(cin, nc)
        feats = cin * res * res
        self.mbd = MinibatchDiscrimination(feats, cfg.mbd_kernels, cfg.mbd_kernel_dim)
        self.linear = spectral_norm(nn.Linear(feats + cfg.mbd_kernels, 1))
        self.proj = spectral_norm(nn.Embedding(nc, feats + cfg.mbd_kernels)) if cfg.d_projection else None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = x
        if self.attn_at < 0:
            h = self.attn(h)
        for i, conv in enumerate(self.convs):
            h = conv(h)
            # The paper puts CBN after every critic conv; we skip the first, as DCGAN and
            # StackGAN++ do. Batch statistics right after a linear layer erase whatever the
            # whole batch shares (a colour cast, a brightness shift), and the critic sees
            # real and fake batches separately, so it barely sees a wrong colour. On the toy
            # check (bench/gan_convergence.py, 1500 steps) the class colours were off by 0.09
            # with it and 0.02 without, with 2.5x more per-image variety without it.
            h = F.leaky_relu(self.bns[i - 1](h, y) if i > 0 else h, 0.2)
            if i == self.attn_at:
                h = self.attn(h)
        h = F.leaky_relu(self.bn_out(self.conv_out(h), y), 0.2)
        h = self.mbd(h.flatten(1))
        out = self.linear(h).squeeze(1)
        if self.proj is not None:
            out = out + (self.proj(y) * h).sum(1)
        return out


def build_histogan(cfg: HistoGANConfig) -> tuple[Generator, nn.ModuleList]:
    """Generator and one critic per stage (coarse to fine, matching G's outputs)."""
    return Generator(cfg), nn.ModuleList([Discriminator(s, cfg) for s in cfg.stage_sizes])


# ----------------------------------------------------------------------------- WGAN-GP losses


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """E[(||grad_x D(x_hat, y)||_2 - 1)^2] on random interpolates x_hat (Gulrajani et al. 2017).

    With batch norm and minibatch discrimination in the critic, D(x_hat_i) also depends on the
    other x_hat_j; we differentiate sum_i D(x_hat_i) w.r.t. each x_hat_i, as the paper's setup implies.
    """
    real, fake = real.float(), fake.detach().float()
    eps = torch.rand(real.size(0), 1, 1, 1, device=real.device)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    # Always float32, also inside an autocast region: a double backward through bf16/fp16
    # activations makes the penalty too coarse to hold the critic near 1-Lipschitz.
    with torch.autocast(real.device.type, enabled=False):
        (grad,) = torch.autograd.grad(critic(x_hat, y).sum(), x_hat, create_graph=True)
        return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def critic_loss(
    discriminators, reals: list[torch.Tensor], fakes: list[torch.Tensor], y: torch.Tensor, gp_weight: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum over stages of D(fake) - D(real) + lambda * GP. Fakes are detached (critic step only).

    reals[k] must be the real batch resized to stage k's resolution (same labels y as the fakes).
    """
    total, stats = 0.0, {}
    for k, (d, real, fake) in enumerate(zip(discriminators, reals, fakes, strict=True)):
        fake = fake.detach()
        d_real, d_fake = d(real, y).mean(), d(fake, y).mean()
        gp = gradient_penalty(d, real, fake, y)
        total = total + d_fake - d_real + gp_weight * gp
        stats[f"wdist{k}"], stats[f"gp{k}"] = (d_real - d_fake).detach(), gp.detach()  # tensors: no CUDA sync
    return total, stats


def generator_loss(discriminators, fakes: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """Sum over stages of -D(G(z, y))."""
    return sum(-d(fake, y).mean() for d, fake in zip(discriminators, fakes, strict=True))


def real_pyramid(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Real batch at every stage resolution (area downsampling), for critic_loss."""
    return [x if s == x.shape[-1] else F.interpolate(x, size=(s, s), mode="area") for s in sizes]
