"""ViT conditional GAN with a classification head (Li, Li, Peng & Lovell, "Unified framework for
histopathology image augmentation and classification via generative models", §III, §IV-B).

Model code only. A pure-transformer WGAN-GP in the TransGAN layout:

G(z, y): [one-hot(y), z_0] -> linear -> tokens on an (H/16)^2 grid X_0 -> 4 stages, each an
up-sampling (stage 1 bicubic x2 at full width, stages 2-4 pixel shuffle x2 with channels / 4) and
``depth`` ViT encoders -> per-token linear to RGB + tanh. Widths are C, C/4, C/16, C/64 at
H/8, H/4, H/2, H. Stages 3 and 4 use grid (windowed) self-attention.
Conditioned class projection (§III-B): z is cut into 4 chunks (conditional skip-z); every layer
norm of stage k takes its gain and bias from a linear map of [one-hot(y), z_k] (eq. 1).

D(x) -> (source, class logits): 3 stages of ViT encoders + 2x2 average pooling; the image enters
as patch embeddings at 3 scales (patch p, 2p, 4p), concatenated channel-wise with the pooled tokens
(TransGAN's multi-scale discriminator). A class token and a source token are then prepended and the
last stage is two ViT encoders, one per head. D never sees the label: it predicts it.

Losses: WGAN-GP on the source head (eq. 2); cross-entropy of the class head on real images and on
the confident synthetic ones (selective augmentation, Algorithm 2), weighted by learned
uncertainties (multi-loss weighting, eq. 7). Training per §IV-B: Adam(lr 1e-4, betas (0, 0.99)),
batch 12, one optimiser for D and the weights sigma (``build_vitgan`` pairs them in ``Critic``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from histosynth.generative.diffaug import check_policy
from histosynth.generative.models.dit import check_positive_ints

NUM_STAGES = 4  # paper: 4 generator stages, 4 discriminator stages
PAPER_IMAGE_SIZE = 96  # PCam
PAPER_WINDOWS = (32, 16)  # §III-A: grid self-attention windows of stages 3 and 4 at the paper's size
MIN_LAST_WIDTH = 4  # a layer norm over fewer channels is close to meaningless


@dataclass(frozen=True)
class ViTGANConfig:
    image_size: int = 96  # PCam patches (§IV-A); must be divisible by 16 (4 x2 up-samplings)
    num_classes: int = 2
    z_dim: int = 256  # paper silent; split into 4 equal chunks (conditional skip-z)
    embed_dim: int = 1024  # G width of stages 1 (C) -> C/4, C/16, C/64; TransGAN's gf_dim
    depth: int = 4  # paper: 4 ViT encoders per generator stage
    num_heads: int = 4  # paper silent; TransGAN's 4, used in G and D
    mlp_ratio: float = 4.0  # ViT / TransGAN
    # Grid self-attention windows (tokens per side) of generator stages 3 and 4; a window >= the
    # map side is full attention, one that does not divide it leaves smaller windows at the edges.
    # None: the paper's (32, 16) at 96 px, scaled with image_size and rounded to powers of two.
    g_windows: tuple | None = None
    d_embed_dim: int = 384  # D width of stage 3 and the head stage (stages 1-2: /4, /2); TransGAN's df_dim
    d_depth: int = 1  # paper: "the first three stages consist of a ViT encoder and an average pooling layer"
    d_patch_size: int = 4  # stage-1 patch; stages 2, 3 embed patches of 2p and 4p (paper silent on p)
    tau: float = 0.7  # §III-D: truncation of z ~ TruncNormal(0, 1, -tau, tau)
    confidence_lambda: float = 0.6  # §III-D: a synthetic image counts if p(its class) > lambda
    gp_weight: float = 10.0  # eq. 2's lambda; paper gives no value -> Gulrajani et al.'s 10
    # Lower bound on the learned uncertainties sigma of eq. 7 (None: unbounded, as the paper).
    # exp(-sigma) weighs the class losses; with sigma free it grows like 1 / CE as a class
    # loss goes to 0 on small data, and the class term swamps the source term.
    sigma_min: float | None = None
    # Std of the conditional-layer-norm projections' initial weights (0: start as plain layer
    # norm, zero-initialised like adaLN-Zero). Zero means z_1..z_3 reach no layer at first.
    cln_init_std: float = 0.0
    # Std of the input projection's initial weights, which make the tokens X_0 from [c, z_0].
    # None: 1 / sqrt(fan-in), so X_0 starts at unit scale. TransGAN's 0.02 (everything else
    # here) starts X_0 at ~0.02-0.06, far below what the encoder blocks add to the residual
    # stream: on the demo the stream's per-sample part was 1 % of its total at the last stage
    # and every z gave the same image within 30 steps.
    input_std: float | None = None
    # Minibatch standard deviation (ProGAN, Karras et al. 2018 §3) as one more token of the
    # critic's head stage: the critic sees how much a group of images varies, so a generator
    # that makes one image for every z is told apart from real data. The paper has none; without
    # it the demo's generator collapsed to one image for every z and label (see docs).
    minibatch_std: bool = True
    # Divide z by the standard deviation of TruncNormal(-tau, tau) inside G, so the truncation
    # bounds z without shrinking it: at tau = 0.7 its std is 0.39, and the z-dependent part of
    # the input started 2.5x smaller than with untruncated noise. Paper silent (BigGAN truncates
    # at sampling only); on the demo, unnormalised z at tau 0.7 collapsed and tau 2 did not.
    normalize_z: bool = True
    # Differentiable augmentation of every image the critic sees (DiffAugment, Zhao et al. 2020;
    # histosynth.generative.diffaug): a subset of ("color", "translation", "cutout"). The paper
    # has none (empty); TransGAN trains with all three.
    diffaug: tuple = ()
    class_projection: bool = True  # ablation (Table II "CP"): False = plain layer norm, no skip-z
    selective: bool = True  # ablation (Table II "SA"): False = every synthetic image in the class loss

    def __post_init__(self):
        name = type(self).__name__
        if isinstance(self.g_windows, list):  # YAML gives lists
            object.__setattr__(self, "g_windows", tuple(self.g_windows))
        object.__setattr__(self, "diffaug", check_policy(f"{name}.diffaug", self.diffaug))
        check_positive_ints(self, ("image_size", "num_classes", "z_dim", "embed_dim", "depth", "num_heads",
                                   "d_embed_dim", "d_depth", "d_patch_size"))
        for f in ("mlp_ratio", "tau", "confidence_lambda", "gp_weight", "cln_init_std"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name}.{f} must be a finite number, got {v!r}")
        for f in ("class_projection", "selective", "minibatch_std", "normalize_z"):
            if not isinstance(getattr(self, f), bool):
                raise ValueError(f"{name}.{f} must be true or false, got {getattr(self, f)!r}")
        if self.num_classes < 2:
            raise ValueError(f"{name}.num_classes must be >= 2 for a conditional GAN, got {self.num_classes}")
        if self.image_size % 2**NUM_STAGES:
            raise ValueError(f"{name}.image_size must be divisible by 16 (4 x2 up-samplings), got {self.image_size}")
        if self.z_dim % NUM_STAGES:
            raise ValueError(f"{name}.z_dim must be divisible by 4 (one chunk per stage), got {self.z_dim}")
        last = self.embed_dim // 4 ** (NUM_STAGES - 1)
        if self.embed_dim % 4 ** (NUM_STAGES - 1) or last < MIN_LAST_WIDTH or last % self.num_heads:
            raise ValueError(f"{name}.embed_dim must be a multiple of 64 (3 pixel shuffles, channels / 4 each) whose "
                             f"last-stage width embed_dim/64 is >= {MIN_LAST_WIDTH} and divisible by num_heads "
                             f"{self.num_heads}, got {self.embed_dim}")
        if self.d_embed_dim % (4 * self.num_heads):
            raise ValueError(f"{name}.d_embed_dim must be divisible by 4 * num_heads = {4 * self.num_heads} "
                             f"(stage-1 width d_embed_dim/4), got {self.d_embed_dim}")
        if self.image_size % (8 * self.d_patch_size):
            raise ValueError(f"{name}.d_patch_size {self.d_patch_size}: image_size {self.image_size} must be "
                             "divisible by 8 * d_patch_size (patches p, 2p, 4p, then a last 2x2 pooling)")
        if not self.mlp_ratio > 0:
            raise ValueError(f"{name}.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not self.tau > 0:
            raise ValueError(f"{name}.tau must be > 0, got {self.tau}")
        if not 0 <= self.confidence_lambda < 1:
            raise ValueError(f"{name}.confidence_lambda must be in [0, 1), got {self.confidence_lambda}")
        if self.sigma_min is not None and (isinstance(self.sigma_min, bool)
                                           or not isinstance(self.sigma_min, (int, float))
                                           or not math.isfinite(self.sigma_min)):
            raise ValueError(f"{name}.sigma_min must be null or a finite number, got {self.sigma_min!r}")
        if self.input_std is not None and (isinstance(self.input_std, bool) or not isinstance(
                self.input_std, (int, float)) or not self.input_std > 0):
            raise ValueError(f"{name}.input_std must be null or a positive number, got {self.input_std!r}")
        if self.cln_init_std < 0:
            raise ValueError(f"{name}.cln_init_std must be >= 0, got {self.cln_init_std}")
        if self.gp_weight < 0:
            raise ValueError(f"{name}.gp_weight must be >= 0, got {self.gp_weight}")
        w = self.g_windows
        if w is not None and (not isinstance(w, tuple) or len(w) != 2
                              or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in w)):
            raise ValueError(f"{name}.g_windows must be null or two positive ints (stages 3 and 4), got {w!r}")

    @property
    def z_chunk(self) -> int:
        return self.z_dim // NUM_STAGES

    @property
    def g_sides(self) -> list[int]:
        """Token-map side of each generator stage: H/8, H/4, H/2, H (X_0 is H/16)."""
        return [self.image_size >> (NUM_STAGES - 1 - k) for k in range(NUM_STAGES)]

    @property
    def g_widths(self) -> list[int]:
        return [self.embed_dim // 4**k for k in range(NUM_STAGES)]

    @property
    def windows(self) -> tuple[int, int]:
        """Grid-attention windows of stages 3 and 4 (g_windows, or the paper's scaled to image_size)."""
        if self.g_windows is not None:
            return self.g_windows
        scale = self.image_size / PAPER_IMAGE_SIZE
        return tuple(max(1, 2 ** round(math.log2(w * scale))) for w in PAPER_WINDOWS)

    @property
    def d_widths(self) -> list[int]:
        """Discriminator widths of stages 1-3 (stage 4 keeps stage 3's)."""
        return [self.d_embed_dim // 4, self.d_embed_dim // 2, self.d_embed_dim]

    @property
    def d_grids(self) -> list[int]:
        """Token-grid side of discriminator stages 1-4."""
        return [self.image_size // (self.d_patch_size * 2**k) for k in range(NUM_STAGES)]

    @property
    def d_patch_sizes(self) -> list[int]:
        """Patch sizes of the three image embeddings: p, 2p, 4p (stage k's grid is image/(p 2^k))."""
        return [self.d_patch_size * 2**k for k in range(NUM_STAGES - 1)]


# ----------------------------------------------------------------------------- layers


class ConditionalLayerNorm(nn.Module):
    """Eq. 1: layer norm without affine, then gain and bias from a linear map of [one-hot(c), z_k].

    The map predicts (gamma - 1, beta); its weights start N(0, init_std) (0: the layer starts
    as plain layer norm) and its bias at zero. ``conditional=False`` (the no-CP ablation) is an
    ordinary layer norm with a learned affine; it ignores y and z.
    """

    def __init__(self, dim: int, num_classes: int, z_dim: int, conditional: bool = True, init_std: float = 0.0):
        super().__init__()
        self.num_classes, self.conditional, self.init_std = num_classes, conditional, init_std
        self.norm = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=not conditional)
        self.proj = nn.Linear(num_classes + z_dim, 2 * dim) if conditional else None
        self.reset_projection()

    def reset_projection(self) -> None:
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, 0.0, self.init_std) if self.init_std > 0 else nn.init.zeros_(
                self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, z: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(x)
        if self.proj is None:
            return h
        code = torch.cat([F.one_hot(y, self.num_classes).to(z.dtype), z], dim=1)
        dgamma, beta = self.proj(code).chunk(2, dim=1)
        return h * (1 + dgamma[:, None]) + beta[:, None]


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention over (N, L, D) tokens, optionally with a key mask (N, L).

    ``fused``: PyTorch's scaled_dot_product_attention (generator). The critic uses the explicit
    matmul/softmax form because fused CUDA kernels are not twice differentiable and the gradient
    penalty needs a double backward.
    """

    def __init__(self, dim: int, num_heads: int, fused: bool):
        super().__init__()
        self.num_heads, self.fused = num_heads, fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        n, l, d = x.shape
        q, k, v = self.qkv(x).view(n, l, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # broadcast over heads, queries
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(n, l, d))


def window_attention(x: torch.Tensor, h: int, w: int, window: int, attend) -> torch.Tensor:
    """Grid self-attention (TransGAN): ``attend`` within non-overlapping window x window blocks.

    x: (N, h*w, D) row-major tokens; attend: (N', L, D), key mask (N', L) or None -> (N', L, D).
    A window >= both sides is one block, i.e. full attention. Sides that the window does not
    divide are zero-padded and the padding is masked out as keys, so edge blocks are smaller.
    """
    n, l, d = x.shape
    if l != h * w:
        raise ValueError(f"{l} tokens are not a {h}x{w} map")
    wh, ww = min(window, h), min(window, w)
    ph, pw = -h % wh, -w % ww
    g = x.view(n, h, w, d)
    mask = None
    if ph or pw:
        g = F.pad(g, (0, 0, 0, pw, 0, ph))
        valid = torch.zeros(h + ph, w + pw, dtype=torch.bool, device=x.device)
        valid[:h, :w] = True
        gh, gw = (h + ph) // wh, (w + pw) // ww
        mask = valid.view(gh, wh, gw, ww).permute(0, 2, 1, 3).reshape(gh * gw, wh * ww).repeat(n, 1)
    gh, gw = g.shape[1] // wh, g.shape[2] // ww
    blocks = g.view(n, gh, wh, gw, ww, d).permute(0, 1, 3, 2, 4, 5).reshape(n * gh * gw, wh * ww, d)
    out = attend(blocks, mask)
    out = out.view(n, gh, gw, wh, ww, d).permute(0, 1, 3, 2, 4, 5).reshape(n, gh * wh, gw * ww, d)
    return out[:, :h, :w].reshape(n, l, d)


class EncoderBlock(nn.Module):
    """Pre-LN ViT encoder: LN -> MHSA (windowed if ``window``) -> residual; LN -> GELU MLP -> residual.

    In the generator the norms are conditional (eq. 1) and read (y, z_k); in the critic they are plain.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, fused: bool, window: int | None = None,
                 num_classes: int = 0, z_dim: int = 0, conditional: bool = False, cln_init_std: float = 0.0):
        super().__init__()
        self.window = window
        self.norm1 = ConditionalLayerNorm(dim, num_classes, z_dim, conditional, cln_init_std)
        self.attn = MultiHeadAttention(dim, num_heads, fused)
        self.norm2 = ConditionalLayerNorm(dim, num_classes, z_dim, conditional, cln_init_std)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, y=None, z=None, hw: tuple[int, int] | None = None) -> torch.Tensor:
        a = self.norm1(x, y, z)
        if self.window is None:
            a = self.attn(a)
        else:
            a = window_attention(a, hw[0], hw[1], self.window, self.attn)
        x = x + a
        return x + self.mlp(self.norm2(x, y, z))


def _init_vit(model: nn.Module) -> None:
    """ViT/TransGAN init: linears N(0, 0.02) truncated, zero biases; class projections as configured."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, ConditionalLayerNorm):
            m.reset_projection()


def _to_map(x: torch.Tensor, side: int) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


# ----------------------------------------------------------------------------- generator


class ViTGenerator(nn.Module):
    """G(z, y) -> (N, 3, H, W) images in [-1, 1]."""

    def __init__(self, cfg: ViTGANConfig):
        super().__init__()
        self.cfg = cfg
        cp, nc = cfg.class_projection, cfg.num_classes
        self.s0 = cfg.image_size // 2**NUM_STAGES
        # With CP, z_0 feeds the input map and the other chunks skip to later stages; without it
        # (the ablation baseline) the whole z enters here, as in an ordinary generator.
        self.input = nn.Linear(nc + (cfg.z_chunk if cp else cfg.z_dim), self.s0**2 * cfg.embed_dim)
        windows = [None, None, *cfg.windows]  # stages 1-2: full attention (small maps)
        self.pos = nn.ParameterList()
        self.stages = nn.ModuleList()
        for side, width, window in zip(cfg.g_sides, cfg.g_widths, windows):
            self.pos.append(nn.Parameter(torch.zeros(1, side * side, width)))
            self.stages.append(nn.ModuleList(
                EncoderBlock(width, cfg.num_heads, cfg.mlp_ratio, fused=True, window=window,
                             num_classes=nc, z_dim=cfg.z_chunk, conditional=cp, cln_init_std=cfg.cln_init_std)
                for _ in range(cfg.depth)))
        self.to_rgb = nn.Linear(cfg.g_widths[-1], 3)  # per-token (1x1 conv), as TransGAN
        _init_vit(self)
        nn.init.normal_(self.input.weight, 0.0, cfg.input_std or self.input.in_features ** -0.5)
        for p in self.pos:
            nn.init.trunc_normal_(p, std=0.02)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if z.dim() != 2 or z.shape[1] != cfg.z_dim or y.shape != (z.shape[0],):
            raise ValueError(f"z must be (N, {cfg.z_dim}) and y (N,), got {tuple(z.shape)} and {tuple(y.shape)}")
        n = z.shape[0]
        if cfg.normalize_z:
            z = z / truncated_normal_std(cfg.tau)
        chunks = z.chunk(NUM_STAGES, dim=1)
        onehot = F.one_hot(y, cfg.num_classes).to(z.dtype)
        h = self.input(torch.cat([onehot, chunks[0] if cfg.class_projection else z], dim=1))
        h = _to_map(h.view(n, self.s0**2, cfg.embed_dim), self.s0)  # X_0
        for k, (blocks, pos) in enumerate(zip(self.stages, self.pos)):
            # Stage 1 keeps its width (bicubic, "early feature learning without reducing dimensions");
            # the later ones trade channels for resolution (pixel shuffle: C -> C/4 at 2x the side).
            if k == 0:
                h = F.interpolate(h, scale_factor=2, mode="bicubic", align_corners=False)
            else:
                h = F.pixel_shuffle(h, 2)
            side = h.shape[-1]
            h = _to_tokens(h) + pos
            for block in blocks:
                h = block(h, y, chunks[k], (side, side))
            h = _to_map(h, side)
        return torch.tanh(self.to_rgb(_to_tokens(h))).transpose(1, 2).reshape(n, 3, side, side)

    @torch.no_grad()
    def sample(self, n: int, y: int | torch.Tensor, generator: torch.Generator | None = None,
               tau: float | None = None) -> torch.Tensor:
        """n images of class(es) y from truncated noise (tau: the config's unless given)."""
        device = self.input.weight.device
        y = torch.as_tensor(y, dtype=torch.long, device=device)
        y = y.expand(n) if y.dim() == 0 else y
        z = truncated_normal((n, self.cfg.z_dim), self.cfg.tau if tau is None else tau, generator=generator,
                             device=device)
        return self(z.to(device), y)


# ----------------------------------------------------------------------------- discriminator


class ViTDiscriminator(nn.Module):
    """D(x) -> (source (N,), class logits (N, C)); unconditional input, two heads."""

    def __init__(self, cfg: ViTGANConfig):
        super().__init__()
        self.cfg = cfg
        d, widths, grids = cfg.d_embed_dim, cfg.d_widths, cfg.d_grids
        # Image embeddings of stages 1-3; with the pooled tokens they make up each stage's width:
        # D/4 = D/4, D/2 = D/4 + D/4, D = D/2 + D/2.
        embed_widths = [widths[0], widths[0], widths[1]]
        self.patch = nn.ModuleList(nn.Conv2d(3, c, p, stride=p) for c, p in zip(embed_widths, cfg.d_patch_sizes))
        self.pos = nn.ParameterList(nn.Parameter(torch.zeros(1, g * g, c)) for g, c in zip(grids, [*widths, d]))
        self.stages = nn.ModuleList(
            nn.ModuleList(EncoderBlock(c, cfg.num_heads, cfg.mlp_ratio, fused=False) for _ in range(cfg.d_depth))
            for c in widths)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.src_token = nn.Parameter(torch.zeros(1, 1, d))
        self.mbstd = nn.Linear(1, d) if cfg.minibatch_std else None  # the group's spread, embedded as a token
        # §III-A: "two ViT encoders that handle the class and source heads, respectively": one
        # encoder per head, both over [class token, source token, tokens].
        self.class_block = EncoderBlock(d, cfg.num_heads, cfg.mlp_ratio, fused=False)
        self.source_block = EncoderBlock(d, cfg.num_heads, cfg.mlp_ratio, fused=False)
        self.class_norm = nn.LayerNorm(d, eps=1e-6)
        self.class_head = nn.Linear(d, cfg.num_classes)
        # No biases before the source score: a constant shift cancels in D(fake) - D(real) and in
        # the penalty, so such a parameter would never receive a gradient.
        self.source_norm = nn.LayerNorm(d, eps=1e-6, bias=False)
        self.source_head = nn.Linear(d, 1, bias=False)
        _init_vit(self)
        for p in [*self.pos, self.cls_token, self.src_token]:
            nn.init.trunc_normal_(p, std=0.02)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.cfg.image_size
        if x.dim() != 4 or x.shape[1:] != (3, s, s):
            raise ValueError(f"x must be (N, 3, {s}, {s}), got {tuple(x.shape)}")
        n, grids = x.shape[0], self.cfg.d_grids
        h = None
        for k, (embed, blocks) in enumerate(zip(self.patch, self.stages)):
            e = _to_tokens(embed(x))
            # Multi-scale input: pooled tokens of the previous stage next to this scale's patches.
            h = e if h is None else torch.cat([_to_tokens(F.avg_pool2d(_to_map(h, grids[k - 1]), 2)), e], dim=2)
            h = h + self.pos[k]
            for block in blocks:
                h = block(h)
        h = _to_tokens(F.avg_pool2d(_to_map(h, grids[2]), 2)) + self.pos[3]
        h = torch.cat([self.cls_token.expand(n, -1, -1), self.src_token.expand(n, -1, -1), h], dim=1)
        # Only the source head sees the group's spread: the class head stays a per-image classifier.
        src = h if self.mbstd is None else torch.cat([h, self.mbstd(minibatch_std(h[:, 2:]))[:, None]], dim=1)
        source = self.source_head(self.source_norm(self.source_block(src)[:, 1])).squeeze(1)
        logits = self.class_head(self.class_norm(self.class_block(h)[:, 0]))
        return source, logits


def minibatch_std(h: torch.Tensor, group: int = 4) -> torch.Tensor:
    """(N, 1): per image, the mean standard deviation of its group's tokens (groups of
    `group` consecutive images, or the whole batch when it does not divide)."""
    n = h.shape[0]
    g = group if n % group == 0 else n
    if g < 2:
        return h.new_zeros(n, 1)
    spread = h.float().view(n // g, g, -1).std(dim=1).mean(dim=1)  # (N / g,)
    return spread.repeat_interleave(g)[:, None].to(h.dtype)


class MultiLossWeight(nn.Module):
    """The learned sigma = (sigma_real, sigma_syn) of eq. 7, zero at start (both weights 1).

    The paper lets sigma range over the reals ("an infinitely regularized value"); with
    `sigma_min`, project_() holds it above that bound after each optimiser step.
    """

    def __init__(self, sigma_min: float | None = None):
        super().__init__()
        self.sigma = nn.Parameter(torch.zeros(2))
        self.sigma_min = sigma_min

    @torch.no_grad()
    def project_(self) -> None:
        if self.sigma_min is not None:
            self.sigma.clamp_(min=self.sigma_min)

    def forward(self, loss_real: torch.Tensor, loss_syn: torch.Tensor, present=None) -> torch.Tensor:
        return multi_loss_weighting(loss_real, loss_syn, self.sigma, present)


class Critic(nn.Module):
    """The discriminator and the multi-loss weights, so one optimiser trains both (§IV-B)."""

    def __init__(self, cfg: ViTGANConfig):
        super().__init__()
        self.d = ViTDiscriminator(cfg)
        self.mlw = MultiLossWeight(cfg.sigma_min)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.d(x)


def build_vitgan(cfg: ViTGANConfig) -> tuple[ViTGenerator, Critic]:
    """Generator, and the critic (D plus sigma) for one Adam(lr 1e-4, betas (0, 0.99)) optimiser."""
    return ViTGenerator(cfg), Critic(cfg)


# ----------------------------------------------------------------------------- losses


def truncated_normal(shape, tau: float, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """z ~ N(0, 1) truncated to [-tau, tau] (§III-D): entries outside are redrawn until none is.

    Drawn on the torch.Generator's device when one is given (reproducible across devices), else on `device`.
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    dev = generator.device if generator is not None else device
    z = torch.randn(shape, generator=generator, device=dev)
    bad = z.abs() > tau
    while bad.any():
        z = torch.where(bad, torch.randn(shape, generator=generator, device=dev), z)
        bad = z.abs() > tau
    return z


def truncated_normal_std(tau: float) -> float:
    """Standard deviation of N(0, 1) truncated to [-tau, tau]: sqrt(1 - 2 tau phi(tau) / (2 Phi(tau) - 1))."""
    phi = math.exp(-tau * tau / 2) / math.sqrt(2 * math.pi)
    return math.sqrt(1 - 2 * tau * phi / math.erf(tau / math.sqrt(2)))


def gradient_penalty(D, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """E[(||grad_x f1(D(x_hat))||_2 - 1)^2] on random interpolates x_hat (eq. 2), source head only."""
    real, fake = real.float(), fake.detach().float()
    eps = torch.rand(real.size(0), 1, 1, 1, device=real.device)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    # Always float32, also inside an autocast region: a double backward through bf16/fp16
    # activations makes the penalty too coarse to hold the critic near 1-Lipschitz.
    with torch.autocast(real.device.type, enabled=False):
        (grad,) = torch.autograd.grad(D(x_hat)[0].sum(), x_hat, create_graph=True)
        return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def critic_loss(D, real: torch.Tensor, fake: torch.Tensor, gp_weight: float
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """WGAN-GP (eq. 2) on the source head: f1(D(fake)) - f1(D(real)) + lambda * GP. Fake is detached."""
    fake = fake.detach()
    s_real, s_fake = D(real)[0].mean(), D(fake)[0].mean()
    gp = gradient_penalty(D, real, fake)
    return s_fake - s_real + gp_weight * gp, {"wdist": (s_real - s_fake).detach(), "gp": gp.detach()}


def multi_loss_weighting(loss_real: torch.Tensor, loss_syn: torch.Tensor, sigma: torch.Tensor,
                         present=None) -> torch.Tensor:
    """Eq. 7: exp(-s1) L_real + exp(-s2) L_syn + s1 + s2.

    `present` (0 or 1, may be a tensor) multiplies the whole synthetic term: with no synthetic
    image selected there is no synthetic task, and a lone + s2 would drive s2 to -inf.
    """
    syn = torch.exp(-sigma[1]) * loss_syn + sigma[1]
    if present is not None:
        syn = syn * present
    return torch.exp(-sigma[0]) * loss_real + sigma[0] + syn


@torch.no_grad()
def confidence_mask(class_logits: torch.Tensor, labels: torch.Tensor, lam: float) -> torch.Tensor:
    """Algorithm 2: True where the class head gives the intended label a probability > lambda."""
    p = class_logits.float().softmax(dim=1).gather(1, labels[:, None]).squeeze(1)
    return p > lam


def discriminator_loss(D, mlw: MultiLossWeight, real: torch.Tensor, real_labels: torch.Tensor,
                       fake: torch.Tensor, fake_labels: torch.Tensor, gp_weight: float, lam: float,
                       selective: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_S + L_mlw (eq. 8) for the critic step; fakes are detached.

    L_mlw weighs the class head's cross-entropy on real images and on synthetic ones (against the
    labels they were generated for); with `selective`, only those passing `confidence_mask` count.
    Parts are detached tensors (no device sync): wdist, gp, ce_real, ce_syn, n_syn, acc_real, sigma_*.
    """
    fake = fake.detach()
    s_real, c_real = D(real)
    s_fake, c_fake = D(fake)
    gp = gradient_penalty(D, real, fake)
    l_s = s_fake.mean() - s_real.mean() + gp_weight * gp
    ce_real = F.cross_entropy(c_real.float(), real_labels)
    ce_each = F.cross_entropy(c_fake.float(), fake_labels, reduction="none")
    keep = confidence_mask(c_fake, fake_labels, lam) if selective else torch.ones_like(ce_each, dtype=torch.bool)
    n_syn = keep.sum()
    # Mean over the kept images, written without indexing so no host sync is needed.
    ce_syn = (ce_each * keep).sum() / n_syn.clamp(min=1)
    total = l_s + mlw(ce_real, ce_syn, present=(n_syn > 0).to(ce_syn.dtype))
    sigma = mlw.sigma.detach()
    parts = {"wdist": (s_real.mean() - s_fake.mean()).detach(), "gp": gp.detach(),
             "ce_real": ce_real.detach(), "ce_syn": ce_syn.detach(), "n_syn": n_syn,
             "acc_real": (c_real.argmax(1) == real_labels).float().mean().detach(),
             "sigma_real": sigma[0], "sigma_syn": sigma[1]}
    return total, parts


def generator_loss(D, fake: torch.Tensor, fake_labels: torch.Tensor, class_weight=1.0) -> torch.Tensor:
    """-f1(D(G(z, c))) + class_weight x cross-entropy of the class head against c.

    G also maximises L_C (eq. 3) through L_total = L_S + L_mlw (eq. 8), where the synthetic
    class term is weighted by exp(-sigma_syn): pass that (detached; sigma is the critic's) as
    class_weight. Unweighted, the class term outgrew the source term on small data and G
    collapsed to one easily classified image per class.
    """
    source, logits = D(fake)
    return -source.mean() + class_weight * F.cross_entropy(logits.float(), fake_labels)



class TruncatedViTGenerator(nn.Module):
    """G(z, y) for generation from standard-normal z: each entry is mapped through the normal
    CDF onto the truncated normal on [-tau, tau] (inverse-CDF sampling, exact in distribution),
    so the truncation trick applies and every image still comes from its own seed."""

    def __init__(self, G: ViTGenerator):
        super().__init__()
        self.G, self.cfg, self.z_dim = G, G.cfg, G.cfg.z_dim

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tau = torch.tensor(self.cfg.tau, dtype=torch.float64)
        lo, hi = torch.special.ndtr(-tau), torch.special.ndtr(tau)
        u = lo + torch.special.ndtr(z.double()) * (hi - lo)
        return self.G(torch.special.ndtri(u).clamp(-self.cfg.tau, self.cfg.tau).to(z.dtype), y)


@torch.no_grad()
def class_probabilities(critic: nn.Module, images, batch_size: int = 256, device="cpu"):
    """Softmax of the class head for uint8 NHWC images (N, C): Algorithm 1's classifier."""
    import numpy as np

    out = []
    for start in range(0, len(images), batch_size):
        x = torch.as_tensor(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        x = x.permute(0, 3, 1, 2).float().div(127.5).sub(1)  # the [-1, 1] range the critic trained on
        out.append(torch.softmax(critic(x)[1].float(), dim=1).cpu())
    return torch.cat(out).double().numpy()
