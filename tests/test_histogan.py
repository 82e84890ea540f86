"""HistoGAN model code: shapes, conditioning, critic parts and one WGAN-GP step (CPU, tiny widths)."""

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from histosynth.generative.models.histogan import ConditionalBatchNorm2d, ConditionalLayerNorm2d, HistoGANConfig, MinibatchDiscrimination, build_histogan, critic_loss, generator_loss, gradient_penalty, num_stages, real_pyramid


def tiny(image_size, **kw):
    return HistoGANConfig(
        image_size=image_size, num_classes=3, z_dim=16, g_channels=8, d_channels=8,
        mbd_kernels=6, mbd_kernel_dim=3, **kw,
    )


def test_num_stages_rule():
    assert [num_stages(s) for s in (32, 64, 96, 128, 224, 256)] == [2, 2, 2, 3, 3, 3]
    assert HistoGANConfig().stage_sizes == [48, 96]  # paper defaults: PCam, 2 stages
    assert HistoGANConfig(image_size=128).stage_sizes == [32, 64, 128]


@pytest.mark.parametrize("size", [32, 64, 96, 128])
def test_forward_shapes_and_range(size):
    torch.manual_seed(0)
    cfg = tiny(size)
    g, ds = build_histogan(cfg)
    y = torch.tensor([0, 1, 2, 1])
    imgs = g(torch.randn(4, cfg.z_dim), y)
    assert len(imgs) == len(ds) == num_stages(size)
    for img, s, d in zip(imgs, cfg.stage_sizes, ds):
        assert img.shape == (4, 3, s, s)
        assert img.min() >= -1 and img.max() <= 1
        assert d(img, y).shape == (4,)
    assert imgs[-1].shape[-1] == size


def test_sample_is_reproducible():
    g, _ = build_histogan(tiny(32))
    g.eval()
    a = g.sample(3, 1, generator=torch.Generator().manual_seed(5))
    b = g.sample(3, torch.tensor([1, 1, 1]), generator=torch.Generator().manual_seed(5))
    assert [x.shape[-1] for x in a] == [16, 32]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_conditional_bn_changes_output_with_label():
    torch.manual_seed(0)
    cbn = ConditionalBatchNorm2d(4, 2)
    nn.init.normal_(cbn.gamma.weight)
    x = torch.randn(2, 4, 5, 5)
    assert not torch.allclose(cbn(x, torch.tensor([0, 0])), cbn(x, torch.tensor([1, 1])))

    # In the full generator, with the one-hot input path cut off, the label still acts through CBN.
    cfg = tiny(32)
    g, _ = build_histogan(cfg)
    with torch.no_grad():
        g.embed.weight[cfg.z_dim :] = 0
        for m in g.modules():
            if isinstance(m, ConditionalBatchNorm2d):
                nn.init.normal_(m.gamma.weight, 1.0, 0.5)
                nn.init.normal_(m.beta.weight, 0.0, 0.5)
    g.eval()  # running stats: each sample is normalised independently of the batch
    z = torch.randn(1, cfg.z_dim)
    a, b = g(z, torch.tensor([0]))[-1], g(z, torch.tensor([2]))[-1]
    assert (a - b).abs().max() > 1e-3


def test_spectral_norm_on_all_critic_convs_and_linears():
    _, ds = build_histogan(tiny(64, d_projection=True))
    for d in ds:
        layers = [m for m in d.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)) and m.weight.dim() > 1]
        sn = [m for m in layers if parametrize.is_parametrized(m, "weight")]
        convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
        assert convs and all(parametrize.is_parametrized(m, "weight") for m in convs)
        # Only the CBN gain/bias embeddings are left without spectral norm.
        assert all(isinstance(m, nn.Embedding) for m in layers if m not in sn)


def test_minibatch_discrimination_depends_on_batch():
    torch.manual_seed(0)
    mbd = MinibatchDiscrimination(10, 4, 3)
    x = torch.randn(3, 10)
    other = torch.randn(1, 10)
    out_a = mbd(torch.cat([x[:2], x[2:]]))
    out_b = mbd(torch.cat([x[:2], other]))
    assert out_a.shape == (3, 14)
    assert torch.equal(out_a[:, :10], torch.cat([x[:2], x[2:]]))  # features pass through
    assert not torch.allclose(out_a[0, 10:], out_b[0, 10:])  # sample 0's statistics see sample 2
    assert torch.allclose(mbd(x[:1])[0, 10:], torch.zeros(4))  # alone: no j != i term


def test_gradient_penalty_zero_for_unit_lipschitz_linear_critic():
    torch.manual_seed(0)
    real, fake, y = torch.randn(8, 3, 6, 6), torch.randn(8, 3, 6, 6), torch.zeros(8, dtype=torch.long)
    w = torch.randn(3 * 6 * 6)
    w = w / w.norm()
    assert gradient_penalty(lambda x, _: x.flatten(1) @ w, real, fake, y).item() == pytest.approx(0.0, abs=1e-10)
    # |grad| = 3 everywhere -> (3 - 1)^2 = 4: the penalty measures the gradient norm, not the output.
    gp = gradient_penalty(lambda x, _: x.flatten(1) @ (3 * w) + 7, real, fake, y)
    assert gp.item() == pytest.approx(4.0, rel=1e-5)


def test_critic_layer_norm_is_per_sample_and_class_conditional():
    torch.manual_seed(0)
    x, others = torch.randn(1, 8, 5, 5), torch.randn(3, 8, 5, 5)
    ln, bn = ConditionalLayerNorm2d(8, 2), ConditionalBatchNorm2d(8, 2)
    for norm in (ln, bn):
        nn.init.normal_(norm.gamma.weight)
    y = torch.tensor([1, 0, 1, 0])
    # A sample's output does not depend on the rest of its batch (what the per-sample GP assumes) ...
    torch.testing.assert_close(ln(torch.cat([x, others]), y)[:1], ln(x, y[:1]))
    assert not torch.allclose(bn(torch.cat([x, others]), y)[:1], bn(torch.cat([x, -others]), y)[:1])
    # ... but does depend on its label.
    assert not torch.allclose(ln(x, torch.tensor([0])), ln(x, torch.tensor([1])))
    with pytest.raises(ValueError, match="d_norm"):
        tiny(32, d_norm="instance")


@pytest.mark.parametrize("projection,d_norm", [(False, "layer"), (True, "layer"), (False, "batch")])
def test_one_wgan_gp_step_stays_finite(projection, d_norm):
    torch.manual_seed(0)
    cfg = tiny(32, d_projection=projection, d_norm=d_norm)
    g, ds = build_histogan(cfg)
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(ds.parameters(), 2e-4, betas=(0.5, 0.999))
    y = torch.tensor([0, 1, 2, 0])
    reals = real_pyramid(torch.rand(4, 3, 32, 32) * 2 - 1, cfg.stage_sizes)
    assert [r.shape[-1] for r in reals] == [16, 32]

    d_before = [p.detach().clone() for p in ds.parameters()]
    loss_d, stats = critic_loss(ds, reals, g(torch.randn(4, cfg.z_dim), y), y, gp_weight=cfg.gp_weight)
    opt_d.zero_grad()
    loss_d.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in ds.parameters())
    assert g.embed.weight.grad is None  # fakes are detached in the critic loss
    opt_d.step()

    loss_g = generator_loss(ds, g(torch.randn(4, cfg.z_dim), y), y)
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()

    assert torch.isfinite(loss_d) and torch.isfinite(loss_g)
    assert all(torch.isfinite(v) for v in stats.values()) and set(stats) == {"wdist0", "gp0", "wdist1", "gp1"}
    assert all(torch.isfinite(p).all() for p in [*g.parameters(), *ds.parameters()])
    assert any(not torch.equal(a, b) for a, b in zip(d_before, ds.parameters()))
    assert g.embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("padding, framed", [("zeros", True), ("reflect", False)])
def test_generator_draws_no_frame_at_init(padding, framed):
    """Zero padding gives every border pixel a constant the interior does not see: the demo's
    samples carried a frame at each stage's scale. Measured at init as the border ring's mean
    (over z) minus the interior's, in units of the per-pixel spread: ~0.4 with zeros, ~0.03
    with reflect (3 seeds)."""
    torch.manual_seed(0)
    cfg = HistoGANConfig(image_size=32, num_classes=2, z_dim=32, g_channels=16, g_up_blocks=3, g_res_blocks=1,
                         g_padding=padding)
    g, _ = build_histogan(cfg)
    with torch.no_grad():
        x = g(torch.randn(256, cfg.z_dim), torch.randint(0, 2, (256,)))[-1]
    mean = x.mean(0)
    ring = torch.cat([mean[:, 0], mean[:, -1], mean[:, :, 0], mean[:, :, -1]], 1).mean(1)
    offset = (ring - mean[:, 2:-2, 2:-2].mean((1, 2))).abs().mean() / x.std(0).mean()
    assert (offset > 0.2) == framed, offset


def test_generator_padding_is_checked():
    with pytest.raises(ValueError, match="g_padding"):
        HistoGANConfig(g_padding="circular")
