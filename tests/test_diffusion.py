"""Gaussian diffusion: cosine schedule, forward process, eq. 9 loss, DDIM/DDPM samplers, guidance, EMA."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from histosynth.generative.models.diffusion import Diffusion, cosine_alphas_cumprod, ema_copy, update_ema


def closed_form_alphas_cumprod(T, s=0.008):
    """Nichol & Dhariwal eq. 17 written out step by step, with their beta clipping."""
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    out, prod = [], 1.0
    for t in range(1, T + 1):
        beta = min(1 - (f(t) / f(0)) / (f(t - 1) / f(0)), 0.999)
        prod *= 1 - beta
        out.append(prod)
    return np.array(out)


def test_cosine_schedule_matches_closed_form():
    for T in (10, 1000):
        ab = cosine_alphas_cumprod(T)
        assert ab.dtype == np.float64 and ab.shape == (T,)
        np.testing.assert_allclose(ab, closed_form_alphas_cumprod(T), rtol=1e-12)
    ab = cosine_alphas_cumprod(1000)
    # Unclipped steps telescope to f(t) / f(0); only the last beta hits the 0.999 clip.
    t = np.arange(1, 1000)
    f = np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(ab[:-1], f, rtol=1e-9)
    assert ab[-1] / ab[-2] == pytest.approx(0.001) and np.all(np.diff(ab) < 0)
    d = Diffusion(1000)
    assert d.alphas_cumprod.dtype == torch.float32 and d.betas.max().item() == pytest.approx(0.999)
    np.testing.assert_allclose(d.alphas_cumprod.numpy(), ab.astype(np.float32))


def test_q_sample_is_eq_1_exactly():
    d = Diffusion(100)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 2, 3, 3, generator=g), torch.randn(5, 2, 3, 3, generator=g)
    t = torch.tensor([0, 10, 50, 98, 99])
    ab = torch.tensor(closed_form_alphas_cumprod(100)[t.numpy()], dtype=torch.float32).view(-1, 1, 1, 1)
    expected = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    torch.testing.assert_close(d.q_sample(x0, t, noise), expected, rtol=1e-6, atol=1e-6)
    # statistics at the last step: pure noise
    big = torch.randn(20000, 1, 1, 1, generator=g)
    xt = d.q_sample(torch.ones_like(big), torch.full((20000,), 99), big)
    assert abs(xt.mean().item()) < 0.03 and abs(xt.std().item() - 1) < 0.03


class Spy(nn.Module):
    """Records (batch size, t, y) of every call; eps = 0.1 x + (y + 1), so classes differ."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.1))
        self.calls = []

    def forward(self, x, t, y):
        self.calls.append((len(x), t.clone(), y.clone()))
        return self.w * x + (y.to(x.dtype) + 1).view(-1, *([1] * (x.dim() - 1)))


def test_training_loss_gradient_and_label_dropout():
    d, spy = Diffusion(50), Spy()
    x0, y = torch.randn(4000, 1, 2, 2), torch.randint(0, 2, (4000,))
    loss = d.training_loss(spy, x0, y, null_label=2, label_dropout=0.25, generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and loss.item() > 0
    loss.backward()
    assert spy.w.grad is not None and spy.w.grad != 0
    _, t, y_seen = spy.calls[0]
    dropped = y_seen == 2
    assert abs(dropped.float().mean().item() - 0.25) < 0.03
    assert torch.equal(y_seen[~dropped], y[~dropped])  # the rest keep their labels
    assert t.min() >= 0 and t.max() < 50 and len(t.unique()) == 50  # uniform over all timesteps
    # no dropout: labels untouched; same generator seed, same loss
    a = d.training_loss(Spy(), x0, y, null_label=2, generator=torch.Generator().manual_seed(1))
    spy2 = Spy()
    b = d.training_loss(spy2, x0, y, null_label=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(spy2.calls[0][2], y)
    with pytest.raises(ValueError, match="null_label"):
        d.training_loss(Spy(), x0, y, null_label=None, label_dropout=0.1)


def test_training_loss_is_eps_mse():
    d = Diffusion(20)

    class Zero(nn.Module):
        def forward(self, x, t, y):
            return torch.zeros_like(x)

    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(2000, 1, 4, 4)
    loss = d.training_loss(Zero(), x0, torch.zeros(2000, dtype=torch.long), null_label=1, generator=g)
    assert loss.item() == pytest.approx(1.0, abs=0.02)  # E[eps^2] = 1


class Oracle(nn.Module):
    """The exact eps for data that is always `x0`: eps = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t)."""

    def __init__(self, d, x0):
        super().__init__()
        self.ab, self.x0 = torch.tensor(cosine_alphas_cumprod(d.T)), x0

    def forward(self, x, t, y):
        ab = self.ab[t].to(x.dtype).view(-1, 1, 1, 1)
        return (x - ab.sqrt() * self.x0) / (1 - ab).sqrt()


@pytest.mark.parametrize("steps", [2, 50])
def test_ddim_with_oracle_recovers_x0(steps):
    d = Diffusion(1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 6, 6, generator=g)
    noise = torch.randn(3, 4, 6, 6, generator=g)
    y = torch.zeros(3, dtype=torch.long)
    out = d.ddim_sample(Oracle(d, x0), noise, y, steps=steps)
    assert out.shape == x0.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)
    # in float64 the recovery is exact to rounding
    out64 = d.ddim_sample(Oracle(d, x0.double()), noise.double(), y, steps=steps)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64, x0.double(), atol=1e-9, rtol=0)


def test_ddpm_with_oracle_recovers_x0_and_clip():
    d = Diffusion(50)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    out = d.ddpm_sample(Oracle(d, x0), noise, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(out, x0, atol=1e-9, rtol=0)
    clipped = d.ddim_sample(Oracle(d, x0), noise, torch.zeros(2, dtype=torch.long), steps=10, clip_x0=0.5)
    assert clipped.abs().max() <= 0.5 + 1e-12 and torch.allclose(clipped, x0.clamp(-0.5, 0.5))


class GaussianOracle(nn.Module):
    """E[eps | x_t] for data x0 ~ N(MU, S^2) per element, plus a small model error.

    x_t ~ N(sqrt(ab) MU, ab S^2 + 1 - ab), so E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) MU) / (ab S^2 + 1 - ab).
    error: "scale" (eps 1 % too large), "bias" (+0.003) or "noise" (N(0, 0.003^2) per call), the
    size of a well-trained denoiser's error; the sampler must not blow it up.
    """

    MU, S = 0.5, 0.6

    def __init__(self, d, error):
        super().__init__()
        self.ab, self.error = torch.tensor(cosine_alphas_cumprod(d.T)), error
        self.g = torch.Generator().manual_seed(1)

    def forward(self, x, t, y):
        ab = self.ab[t].view(-1, 1).to(x.dtype)
        eps = (1 - ab).sqrt() * (x - ab.sqrt() * self.MU) / (ab * self.S**2 + 1 - ab)
        if self.error == "scale":
            return eps * 1.01
        if self.error == "bias":
            return eps + 0.003
        return eps + 0.003 * torch.randn(x.shape, generator=self.g, dtype=x.dtype)


@pytest.mark.parametrize("error", ["scale", "bias", "noise"])
def test_samplers_match_gaussian_data_with_a_slightly_wrong_eps(error):
    """Sample mean and std equal the data's for DDIM at any practical step count and for
    ancestral sampling. The old sampler (even spacing from t = T - 1, no x0 clamp) gave
    std 5 at 10 steps and 1.2 at 50 with these errors: ab(999) ~ 2e-9 amplifies them ~20 000x."""
    d = Diffusion(1000)
    noise = torch.randn(4000, 4, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(4000, dtype=torch.long)
    clip = GaussianOracle.MU + 4 * GaussianOracle.S  # the data's range, as the VAE's latent_range
    runs = {f"ddim{n}": dict(steps=n) for n in (10, 50, 250, 1000)}
    for name, kw in [*runs.items(), ("ddpm", None)]:
        model = GaussianOracle(d, error)
        if kw is None:
            x = d.ddpm_sample(model, noise, y, clip_x0=clip, noise_fn=lambda i, shape: torch.randn(
                shape, generator=torch.Generator().manual_seed(i)))
        else:
            x = d.ddim_sample(model, noise, y, clip_x0=clip, **kw)
        assert abs(x.mean().item() - GaussianOracle.MU) < 0.06, (name, x.mean().item())
        assert abs(x.std().item() / GaussianOracle.S - 1) < 0.15, (name, x.std().item())


def test_ddim_timesteps():
    d = Diffusion(1000)
    ts = d.ddim_timesteps(50)
    assert ts == list(range(980, -1, -20))  # guided-diffusion's "ddim50": never t = 999, where ab ~ 2e-9
    assert d.ddim_timesteps(2) == [500, 0]
    assert d.ddim_timesteps(1000) == list(range(999, -1, -1))
    ts = d.ddim_timesteps(7)
    assert len(ts) == 7 and ts[-1] == 0 and all(a > b for a, b in zip(ts, ts[1:]))
    for bad in (1, 1001):
        with pytest.raises(ValueError, match="steps"):
            d.ddim_timesteps(bad)


def seeded_noise(seed):
    g = torch.Generator().manual_seed(seed)
    calls = []

    def noise_fn(step, shape):
        calls.append((step, tuple(shape)))
        return torch.randn(shape, generator=g, dtype=torch.float64)

    return noise_fn, calls


def test_determinism_and_ddim_eta1_all_steps_is_ddpm():
    d = Diffusion(20)
    model = Spy()
    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 0])
    a = d.ddim_sample(model, noise, y, steps=7)
    assert torch.equal(a, d.ddim_sample(model, noise.clone(), y, steps=7))
    fn1, calls = seeded_noise(5)
    p1 = d.ddpm_sample(model, noise, y, noise_fn=fn1)
    assert [c[0] for c in calls] == list(range(19)) and calls[0][1] == (3, 2, 4, 4)  # no noise at t = 0
    p2 = d.ddpm_sample(model, noise, y, noise_fn=seeded_noise(5)[0])
    p3 = d.ddpm_sample(model, noise, y, noise_fn=seeded_noise(6)[0])
    assert torch.equal(p1, p2) and not torch.equal(p1, p3)
    # Song et al.: DDIM with eta = 1 over all T steps is ancestral DDPM sampling.
    ddim = d.ddim_sample(model, noise, y, steps=20, eta=1.0, noise_fn=seeded_noise(5)[0])
    torch.testing.assert_close(ddim, p1, atol=1e-9, rtol=1e-9)


def test_guidance_batching_and_formula():
    d = Diffusion(10)
    noise = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0])
    spy = Spy()
    d.ddim_sample(spy, noise, y, steps=5, guidance_scale=1.0, null_label=2)
    assert [c[0] for c in spy.calls] == [4] * 5 and all(torch.equal(c[2], y) for c in spy.calls)

    spy = Spy()
    d.ddim_sample(spy, noise, y, steps=2, guidance_scale=3.0, null_label=2)
    assert len(spy.calls) == 2
    for (n, t, y_in), step in zip(spy.calls, (5, 0)):
        assert n == 8 and torch.equal(t, torch.full((8,), step))
        assert torch.equal(y_in, torch.tensor([0, 1, 1, 0, 2, 2, 2, 2]))
    # the guided eps is eps_u + s (eps_c - eps_u)
    w = spy.w.item()  # 0.1 as float32
    eps_c = w * noise + (y.double() + 1).view(-1, 1, 1, 1)
    eps_u = w * noise + 3.0
    torch.testing.assert_close(d._eps(spy, noise, 5, y, 3.0, 2), eps_u + 3.0 * (eps_c - eps_u), atol=1e-9, rtol=1e-9)

    spy = Spy()
    d.ddpm_sample(spy, noise, y, guidance_scale=2.0, null_label=2)
    assert [c[0] for c in spy.calls] == [8] * 10
    with pytest.raises(ValueError, match="null_label"):
        d.ddim_sample(Spy(), noise, y, steps=5, guidance_scale=2.0)


def test_ema_update():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ema_copy(model)
    assert not any(p.requires_grad for p in ema.parameters()) and not ema.training
    before = [p.clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(7.0)
    update_ema(ema, model, decay=0.9)
    for e, b, p in zip(ema.parameters(), before, model.parameters()):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p)
    assert torch.equal(ema[1].running_mean, torch.full((2,), 7.0))
    update_ema(ema, model, decay=0.0)
    assert all(torch.equal(e, p) for e, p in zip(ema.parameters(), model.parameters()))
