"""Gaussian diffusion (DDPM/DDIM) with classifier-free guidance, independent of the denoiser.

The latent-diffusion PCam paper (§3.2): forward process eq. 1 with a cosine noise
schedule, the 'simple' epsilon-MSE loss eq. 9, ancestral sampling eq. 2. DDIM
(Song et al. 2021) is the fast sampler; classifier-free guidance (Ho & Salimans
2022) uses one label value, ``null_label``, as "no class".

A denoiser is any module ``model(x_t, t, y) -> eps`` with x_t (N, C, H, W) float,
t (N,) long in [0, T) and y (N,) long in [0, num_classes], where num_classes is the
null label. Timestep index t here is the paper's t + 1: t = 0 is the first noising
step, t = T - 1 the last (x_T).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def cosine_alphas_cumprod(T: int, s: float = 0.008) -> np.ndarray:
    """alpha-bar_t for t = 1..T (float64, length T) of Nichol & Dhariwal 2021 eq. 17.

    alpha-bar(t) = f(t) / f(0), f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2); the betas
    1 - alpha-bar_t / alpha-bar_{t-1} are clipped at 0.999 (their §3.2: the last steps
    near t = T would otherwise be singular) and alpha-bar is rebuilt from the clipped betas.
    """
    if T < 1:
        raise ValueError(f"number of timesteps must be >= 1, got {T}")
    f = np.cos((np.arange(T + 1, dtype=np.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
    betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)
    return np.cumprod(1.0 - betas)


class Diffusion:
    """The forward process and samplers for a T-step cosine schedule.

    Schedules are computed in float64 and kept as float32 CPU tensors for training
    (gathered per sample and moved to the batch's device on use); the samplers use
    the float64 values as Python scalars, so they run in the dtype of the noise given.
    """

    def __init__(self, num_timesteps: int = 1000, cosine_s: float = 0.008):
        self.T = int(num_timesteps)
        ab = cosine_alphas_cumprod(self.T, cosine_s)
        ab_prev = np.concatenate([[1.0], ab[:-1]])
        betas = 1.0 - ab / ab_prev
        self._ab, self._ab_prev, self._betas = ab, ab_prev, betas
        # Variance of q(x_{t-1} | x_t, x_0) (DDPM eq. 7): beta-tilde_t; 0 at t = 0.
        posterior_variance = betas * (1.0 - ab_prev) / (1.0 - ab)
        self._posterior_variance = posterior_variance
        as32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
        self.betas = as32(betas)
        self.alphas_cumprod = as32(ab)
        self.alphas_cumprod_prev = as32(ab_prev)
        self.sqrt_alphas_cumprod = as32(np.sqrt(ab))
        self.sqrt_one_minus_alphas_cumprod = as32(np.sqrt(1.0 - ab))
        self.posterior_variance = as32(posterior_variance)

    @staticmethod
    def _gather(buf: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """buf[t] shaped (N, 1, 1, ...) to broadcast against x, on x's device and dtype."""
        return buf.to(t.device)[t].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) noise (eq. 1)."""
        return (self._gather(self.sqrt_alphas_cumprod, t, x0) * x0
                + self._gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def training_loss(self, model: nn.Module, x0: torch.Tensor, y: torch.Tensor, *, null_label: int | None,
                      label_dropout: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Eq. 9: MSE between the noise and model(x_t, t, y'), t ~ U{0..T-1}, noise ~ N(0, I).

        y' is y with a `label_dropout` fraction of the batch (each sample independently)
        replaced by `null_label`, which trains the unconditional model that
        classifier-free guidance needs. Random draws come from `generator` when given
        (drawn on its device, then moved), else from the global RNG of x0's device.
        """
        if not 0.0 <= label_dropout <= 1.0:
            raise ValueError(f"label_dropout must be in [0, 1], got {label_dropout}")
        if label_dropout > 0 and null_label is None:
            raise ValueError("label_dropout > 0 needs a null_label")
        n, dev = len(x0), x0.device
        gdev = generator.device if generator is not None else dev
        t = torch.randint(0, self.T, (n,), generator=generator, device=gdev).to(dev)
        noise = torch.randn(x0.shape, generator=generator, device=gdev, dtype=x0.dtype).to(dev)
        if label_dropout > 0:
            drop = (torch.rand(n, generator=generator, device=gdev) < label_dropout).to(dev)
            y = torch.where(drop, torch.full_like(y, null_label), y)
        eps = model(self.q_sample(x0, t, noise), t, y)
        return F.mse_loss(eps.float(), noise.float())  # float32 even under autocast

    # ------------------------------------------------------------------------- sampling

    def _eps(self, model, x, t: int, y, guidance_scale: float, null_label: int | None) -> torch.Tensor:
        """Guided noise prediction at timestep t for the whole batch."""
        n = len(x)
        if guidance_scale == 1.0:  # plain conditional model: no unconditional pass at all
            return model(x, torch.full((n,), t, dtype=torch.long, device=x.device), y).to(x.dtype)
        if null_label is None:
            raise ValueError("classifier-free guidance (guidance_scale != 1) needs a null_label")
        # Conditional and unconditional halves in one forward of 2N (one kernel launch per layer).
        out = model(torch.cat([x, x]), torch.full((2 * n,), t, dtype=torch.long, device=x.device),
                    torch.cat([y, torch.full_like(y, null_label)])).to(x.dtype)
        eps_c, eps_u = out[:n], out[n:]
        return eps_u + guidance_scale * (eps_c - eps_u)

    def _predict_x0(self, x, eps, t: int, clip_x0: float | None):
        """x0 from x_t and eps (eq. 1 inverted); with clipping, eps is made consistent with the clipped x0."""
        ab = self._ab[t]
        x0 = (x - math.sqrt(1.0 - ab) * eps) / math.sqrt(ab)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            eps = (x - math.sqrt(ab) * x0) / math.sqrt(1.0 - ab)
        return x0, eps

    @staticmethod
    def _noise(noise_fn, step: int, x: torch.Tensor) -> torch.Tensor:
        z = torch.randn_like(x) if noise_fn is None else noise_fn(step, x.shape)
        return z.to(device=x.device, dtype=x.dtype)

    def ddim_timesteps(self, steps: int) -> list[int]:
        """`steps` timesteps t_i = floor(i T / steps), i < steps, descending ("leading" spacing).

        DDIM-50 at T = 1000 runs 980, 960, ..., 0, as guided-diffusion's "ddim50" (LDM's
        uniform schedule likewise tops at 981). The cosine schedule's last timesteps have
        alpha-bar ~ 1e-9 (beta clipped at 0.999), so there x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)
        amplifies the denoiser's eps error ~20 000x; with an even spacing that includes
        t = T - 1, a 0.3 % eps error inflated DDIM-50 samples of unit-variance data to std 1.7.
        Starting one stride below T treats the initial noise as x at ab ~ 1e-3, which is pure
        noise to within 0.1 % in variance. With few steps the first stride is long and that
        mismatch grows (10 steps start at t = 900, ab = 0.02), so use >= 10.
        """
        if not 2 <= steps <= self.T:
            raise ValueError(f"DDIM steps must be in [2, {self.T}], got {steps}")
        return [int(v) for v in (np.arange(steps) * self.T // steps)[::-1]]

    @torch.no_grad()
    def ddim_sample(self, model: nn.Module, noise: torch.Tensor, y: torch.Tensor, *, steps: int = 50,
                    eta: float = 0.0, guidance_scale: float = 1.0, null_label: int | None = None,
                    clip_x0: float | None = None, noise_fn=None) -> torch.Tensor:
        """DDIM (Song et al. 2021 eq. 12) from x_T = `noise` to x0.

        eta = 0: deterministic given `noise`; eta = 1 with steps = T: ancestral sampling
        with the posterior variance beta-tilde_t (DDPM). The per-step noise for eta > 0
        comes from noise_fn(step_index, shape) when given (see ddpm_sample).
        """
        x = noise
        ts = self.ddim_timesteps(steps)
        for i, t in enumerate(ts):
            ab = self._ab[t]
            ab_prev = self._ab[ts[i + 1]] if i + 1 < len(ts) else 1.0
            x0, eps = self._predict_x0(x, self._eps(model, x, t, y, guidance_scale, null_label), t, clip_x0)
            sigma = eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
            x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * self._noise(noise_fn, i, x)
        return x

    @torch.no_grad()
    def ddpm_sample(self, model: nn.Module, noise: torch.Tensor, y: torch.Tensor, *,
                    guidance_scale: float = 1.0, null_label: int | None = None,
                    clip_x0: float | None = None, noise_fn=None) -> torch.Tensor:
        """Ancestral sampling over all T steps (eq. 2 with sigma_t^2 = beta-tilde_t) from x_T = `noise`.

        noise_fn(step_index, shape) -> tensor supplies the Gaussian noise of step
        step_index (0 for t = T-1, ...; none is drawn at the final step t = 0), so a
        caller can draw each image's noise from its own seeded generator; default
        torch.randn_like (the global RNG).
        """
        x = noise
        for i, t in enumerate(range(self.T - 1, -1, -1)):
            x0, _ = self._predict_x0(x, self._eps(model, x, t, y, guidance_scale, null_label), t, clip_x0)
            # Posterior mean of q(x_{t-1} | x_t, x0) (DDPM eq. 7); equals eq. 2 when x0 is unclipped.
            ab, ab_prev, beta = self._ab[t], self._ab_prev[t], self._betas[t]
            coef_x0 = beta * math.sqrt(ab_prev) / (1.0 - ab)
            coef_xt = (1.0 - ab_prev) * math.sqrt(1.0 - beta) / (1.0 - ab)
            x = coef_x0 * x0 + coef_xt * x
            if t > 0:
                x = x + math.sqrt(self._posterior_variance[t]) * self._noise(noise_fn, i, x)
        return x


# ----------------------------------------------------------------------------- EMA


def ema_copy(model: nn.Module) -> nn.Module:
    """A frozen deep copy of `model` to hold the exponential moving average of its weights."""
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float = 0.9999) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter; buffers are copied.

    A plain deep-copied module rather than an EMA class: it saves, loads and samples
    like the model itself (state_dict, load_state_dict, forward). decay 0.9999 suits
    runs of 100k+ steps; short runs need less (the average spans ~1 / (1 - decay) steps).
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    # Buffers (e.g. norm statistics, integer counters) are not averaged, just mirrored.
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)
