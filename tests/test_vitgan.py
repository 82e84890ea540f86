"""ViT cGAN model code: conditional layer norm, grid attention, shapes, losses (CPU, tiny widths)."""

import math

import numpy as np

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from histosynth.generative.models.vitgan import ConditionalLayerNorm, MultiHeadAttention, MultiLossWeight, ViTGANConfig, build_vitgan, confidence_mask, critic_loss, discriminator_loss, generator_loss, multi_loss_weighting, truncated_normal, window_attention


def tiny(image_size=16, **kw):
    base = dict(image_size=image_size, num_classes=3, z_dim=16, embed_dim=256, depth=1, num_heads=2,
                d_embed_dim=32, d_depth=1, d_patch_size=2)
    return ViTGANConfig(**{**base, **kw})


def randomise_projections(model):
    """Class projections start at zero (plain layer norm); give them weights so classes differ."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ConditionalLayerNorm) and m.proj is not None:
                nn.init.normal_(m.proj.weight, std=0.5)


# ----------------------------------------------------------------------------- config


def test_defaults_follow_the_paper():
    cfg = ViTGANConfig()
    assert (cfg.image_size, cfg.depth, cfg.tau, cfg.confidence_lambda) == (96, 4, 0.7, 0.6)
    assert cfg.g_sides == [12, 24, 48, 96] and cfg.g_widths == [1024, 256, 64, 16]
    assert cfg.windows == (32, 16)  # §III-A at the paper's size
    assert ViTGANConfig(image_size=32).windows == (8, 4)  # scaled, powers of two
    assert cfg.d_grids == [24, 12, 6, 3] and cfg.d_patch_sizes == [4, 8, 16]


def test_yaml_lists_become_tuples():
    assert tiny(g_windows=[4, 2]).g_windows == (4, 2)
    assert tiny(diffaug=["color", "cutout"]).diffaug == ("color", "cutout")


@pytest.mark.parametrize("field, value", [
    ("image_size", 40), ("image_size", 0), ("num_classes", 1), ("z_dim", 18), ("embed_dim", 96),
    ("embed_dim", 128), ("depth", 0), ("num_heads", True), ("mlp_ratio", 0), ("d_embed_dim", 36),
    ("d_patch_size", 4), ("tau", 0.0), ("confidence_lambda", 1.0), ("gp_weight", float("nan")),
    ("g_windows", (4,)), ("g_windows", [4, 0]), ("class_projection", 1), ("selective", "yes"),
    ("diffaug", ["colour"]), ("diffaug", "color"),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        tiny(**{field: value})


# ----------------------------------------------------------------------------- layers


def test_conditional_layer_norm_follows_class_not_only_z():
    torch.manual_seed(0)
    cln = ConditionalLayerNorm(8, 3, 4)
    x, z = torch.randn(2, 5, 8), torch.randn(1, 4).expand(2, 4)
    plain = F.layer_norm(x, (8,), eps=1e-6)
    assert torch.allclose(cln(x, torch.tensor([0, 1]), z), plain)  # zero-init projection: plain layer norm
    randomise_projections(cln)
    a = cln(x, torch.tensor([0, 0]), z)
    b = cln(x, torch.tensor([1, 1]), z)
    assert torch.equal(a, cln(x, torch.tensor([0, 0]), z))
    assert (a - b).abs().max() > 1e-2
    assert (a - cln(x, torch.tensor([0, 0]), torch.randn(2, 4))).abs().max() > 1e-2  # z matters too (skip-z)

    off = ConditionalLayerNorm(8, 3, 4, conditional=False)
    with torch.no_grad():
        off.norm.weight.normal_(), off.norm.bias.normal_()
    assert torch.equal(off(x, torch.tensor([0, 0]), z), off(x, torch.tensor([2, 1]), torch.randn(2, 4)))


def test_generator_label_acts_through_class_projection():
    torch.manual_seed(0)
    z = torch.randn(1, 16)
    for cp in (True, False):
        g, _ = build_vitgan(tiny(class_projection=cp))
        randomise_projections(g)
        with torch.no_grad():
            g.input.weight[:, :3] = 0  # cut the one-hot input path: only the layer norms see the label
        a, b = g(z, torch.tensor([0])), g(z, torch.tensor([2]))
        assert ((a - b).abs().max() > 1e-4) == cp


def reference_windows(x, h, w, window, attend):
    """Loop over window blocks (edges cut short) and attend to each on its own."""
    g, out = x.view(x.shape[0], h, w, -1), torch.empty_like(x).view(x.shape[0], h, w, -1)
    for i in range(0, h, window):
        for j in range(0, w, window):
            blk = g[:, i:i + window, j:j + window]
            bh, bw = blk.shape[1:3]
            out[:, i:i + bh, j:j + bw] = attend(blk.reshape(x.shape[0], bh * bw, -1)).view(x.shape[0], bh, bw, -1)
    return out.view_as(x)


@pytest.mark.parametrize("fused", [True, False])
def test_window_attention(fused):
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 2, fused=fused)
    x = torch.randn(2, 6 * 6, 8)
    full = attn(x)
    for window in (6, 7, 100):  # window covers the map: full attention
        assert torch.allclose(window_attention(x, 6, 6, window, attn), full, atol=1e-6)
    local = window_attention(x, 6, 6, 3, attn)
    assert not torch.allclose(local, full, atol=1e-3)
    assert torch.allclose(local, reference_windows(x, 6, 6, 3, attn), atol=1e-5)
    # A window that does not divide the side: padded keys are masked, edge blocks are smaller.
    assert torch.allclose(window_attention(x, 6, 6, 4, attn), reference_windows(x, 6, 6, 4, attn), atol=1e-5)


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize("size", [16, 32])
def test_shapes_and_range(size):
    torch.manual_seed(0)
    cfg = tiny(size)
    g, d = build_vitgan(cfg)
    y = torch.tensor([0, 1, 2])
    x = g(torch.randn(3, cfg.z_dim), y)
    assert x.shape == (3, 3, size, size) and x.min() >= -1 and x.max() <= 1
    source, logits = d(x)
    assert source.shape == (3,) and logits.shape == (3, cfg.num_classes)
    s = g.sample(2, 1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s, g.sample(2, torch.tensor([1, 1]), generator=torch.Generator().manual_seed(3)))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    cfg = tiny()
    g, critic = build_vitgan(cfg)
    y = torch.tensor([0, 1, 2, 1])
    fake = g(torch.randn(4, cfg.z_dim), y)
    generator_loss(critic, fake, y).backward()
    missing = [n for n, p in g.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing

    critic.zero_grad()
    real = torch.rand(4, 3, 16, 16) * 2 - 1
    loss, parts = discriminator_loss(critic.d, critic.mlw, real, y, fake, y, gp_weight=10.0, lam=0.6, selective=False)
    loss.backward()
    missing = [n for n, p in critic.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing  # includes mlw.sigma
    assert parts["gp"] > 0 and int(parts["n_syn"]) == 4


def test_critic_loss_under_autocast():
    torch.manual_seed(0)
    g, critic = build_vitgan(tiny())
    y = torch.tensor([0, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = g(torch.randn(2, 16), y)
        loss, parts = critic_loss(critic, torch.rand(2, 3, 16, 16), fake, gp_weight=10.0)
    loss.backward()
    assert parts["gp"].dtype == torch.float32 and math.isfinite(loss.item())


# ----------------------------------------------------------------------------- losses


def test_multi_loss_weighting_formula_and_update():
    sigma = torch.tensor([0.3, -0.5])
    l1, l2 = torch.tensor(2.0), torch.tensor(0.7)
    expected = math.exp(-0.3) * 2.0 + math.exp(0.5) * 0.7 + 0.3 - 0.5
    assert multi_loss_weighting(l1, l2, sigma).item() == pytest.approx(expected, rel=1e-6)
    # No synthetic image selected: the whole synthetic term (sigma_2 included) drops out.
    assert multi_loss_weighting(l1, l2, sigma, present=0.0).item() == pytest.approx(math.exp(-0.3) * 2.0 + 0.3)

    mlw = MultiLossWeight()
    opt = torch.optim.Adam(mlw.parameters(), lr=1e-2, betas=(0.0, 0.99))
    mlw(l1, l2).backward()
    assert torch.allclose(mlw.sigma.grad, torch.tensor([1 - 2.0, 1 - 0.7]))  # d/ds (e^-s L + s) = 1 - L at 0
    opt.step()
    assert mlw.sigma[0] > 0 and mlw.sigma[1] < 0  # L_real > 1 raises its sigma, L_syn < 1 lowers it


def test_confidence_mask():
    p = torch.tensor([[0.9, 0.1], [0.55, 0.45], [0.3, 0.7], [0.3, 0.7], [0.61, 0.39]])
    labels = torch.tensor([0, 0, 1, 0, 0])
    assert confidence_mask(p.log(), labels, 0.6).tolist() == [True, False, True, False, True]


def test_truncated_normal():
    z = truncated_normal((20000,), 0.7, generator=torch.Generator().manual_seed(0))
    assert z.abs().max() <= 0.7
    # Std of N(0, 1) truncated to [-t, t]: sqrt(1 - 2 t phi(t) / (2 Phi(t) - 1)).
    t = 0.7
    phi, mass = math.exp(-t * t / 2) / math.sqrt(2 * math.pi), math.erf(t / math.sqrt(2))
    assert z.std().item() == pytest.approx(math.sqrt(1 - 2 * t * phi / mass), abs=0.01)
    assert abs(z.mean().item()) < 0.01 and z.unique().numel() > 19000
    assert torch.equal(z, truncated_normal((20000,), 0.7, generator=torch.Generator().manual_seed(0)))


class StubCritic(nn.Module):
    """Source = w * mean(x); class logits read from pixels (row 0 of channel 0), so tests set them."""

    def __init__(self, num_classes):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))
        self.num_classes = num_classes

    def forward(self, x):
        return self.w * x.mean((1, 2, 3)), x[:, 0, 0, : self.num_classes]


def test_selective_counts_only_confident_fakes():
    torch.manual_seed(0)
    d, mlw = StubCritic(2), MultiLossWeight()
    real, fake = torch.zeros(4, 3, 4, 4), torch.zeros(4, 3, 4, 4)
    logits = torch.tensor([[3.0, 0.0], [0.1, 0.0], [0.0, 2.0], [1.0, 0.0]])  # p(label): .95 .52 .88 .27
    fake[:, 0, 0, :2] = logits
    labels = torch.tensor([0, 0, 1, 1])
    ce = F.cross_entropy(logits, labels, reduction="none")

    _, parts = discriminator_loss(d, mlw, real, labels, fake, labels, gp_weight=10.0, lam=0.6, selective=True)
    assert int(parts["n_syn"]) == 2
    assert parts["ce_syn"].item() == pytest.approx(ce[[0, 2]].mean().item(), rel=1e-6)

    _, parts = discriminator_loss(d, mlw, real, labels, fake, labels, gp_weight=10.0, lam=0.6, selective=False)
    assert int(parts["n_syn"]) == 4
    assert parts["ce_syn"].item() == pytest.approx(ce.mean().item(), rel=1e-6)

    # Nothing confident: the synthetic term is dropped and sigma_syn gets no gradient.
    total, parts = discriminator_loss(d, mlw, real, labels, fake, labels, gp_weight=10.0, lam=0.99, selective=True)
    total.backward()
    assert int(parts["n_syn"]) == 0 and mlw.sigma.grad[1] == 0 and mlw.sigma.grad[0] != 0


def test_generation_maps_normal_draws_onto_the_truncated_normal():
    from scipy import stats

    from histosynth.generative.models.vitgan import TruncatedViTGenerator

    seen = []

    class Spy(torch.nn.Module):
        cfg = tiny()

        def forward(self, z, y):
            seen.append(z)
            return z

    TruncatedViTGenerator(Spy())(torch.randn(4000, 8, generator=torch.Generator().manual_seed(0)), None)
    z = seen[0].flatten().numpy()
    tau = Spy.cfg.tau
    assert np.abs(z).max() <= tau
    assert stats.kstest(z, stats.truncnorm(-tau, tau).cdf).pvalue > 0.01
