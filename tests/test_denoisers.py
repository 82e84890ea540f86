"""Latent-diffusion denoisers (U-Net, DiT): shapes, zero init, conditioning, attention, sin-cos positions, configs."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from histosynth.generative.models.dit import DiT, DiTConfig, SelfAttention, sincos_pos_embed_2d, timestep_embedding
from histosynth.generative.models.unet import AttentionBlock, UNet, UNetConfig


def tiny_unet(**kw):
    kw = {"base_channels": 32, "channel_mults": (1, 2), "num_res_blocks": 1, "attention_resolutions": (2,), **kw}
    return UNet(UNetConfig(**kw))


def tiny_dit(**kw):
    return DiT(DiTConfig(**{"hidden_size": 64, "depth": 2, "num_heads": 4, **kw}))


BUILDERS = {"unet": tiny_unet, "dit": tiny_dit}


def batch(n, c, s, num_classes=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, s, s, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.arange(n) % (num_classes + 1)  # every label, the null one included
    return x, t, y


@pytest.mark.parametrize("name,kw,shape", [
    ("unet", {}, (4, 8, 8)),
    ("unet", {"channel_mults": (1, 2, 2), "attention_resolutions": (2, 4)}, (3, 16, 16)),
    ("unet", {"num_res_blocks": 2, "attention_resolutions": ()}, (4, 24, 24)),
    ("dit", {}, (4, 8, 8)),
    ("dit", {"patch_size": 4}, (3, 16, 16)),
    ("dit", {"num_classes": 5}, (4, 24, 24)),
])
def test_shape_and_zero_at_init(name, kw, shape):
    torch.manual_seed(0)
    model = BUILDERS[name](in_channels=shape[0], input_size=shape[1], **kw)
    x, t, y = batch(3, shape[0], shape[1], num_classes=model.cfg.num_classes)
    out = model(x, t, y)
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output layer


@pytest.fixture(scope="module", params=["unet", "dit"])
def trained(request):
    """~20 Adam steps of MSE to fixed random targets on one fixed batch."""
    torch.manual_seed(0)
    model = BUILDERS[request.param]()
    x, t, y = batch(6, 4, 8)
    target = torch.randn_like(x)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses, nonzero_after_one = [], None
    for step in range(20):
        loss = nn.functional.mse_loss(model(x, t, y), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == 0:
            with torch.no_grad():
                nonzero_after_one = model(x, t, y).abs().max().item() > 0
    return model.eval(), losses, nonzero_after_one


def test_training_moves_off_zero_and_loss_drops(trained):
    _, losses, nonzero_after_one = trained
    assert nonzero_after_one
    assert losses[-1] < 0.9 * losses[0], losses


@torch.no_grad()
def test_label_and_timestep_reach_the_output(trained):
    model, _, _ = trained
    x, t, _ = batch(2, 4, 8, seed=1)
    outs = {k: model(x, t, torch.full((2,), k)) for k in range(3)}  # 2 = null label row
    assert torch.equal(outs[0], model(x, t, torch.zeros(2, dtype=torch.long)))  # deterministic in eval
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        assert (outs[a] - outs[b]).abs().max() > 1e-5
    y = torch.zeros(2, dtype=torch.long)
    assert (model(x, torch.tensor([10, 10]), y) - model(x, torch.tensor([900, 900]), y)).abs().max() > 1e-5
    with pytest.raises(IndexError):
        model(x, t, torch.full((2,), 3))  # beyond the null label


def test_sincos_pos_embed_matches_numpy_mae_formula():
    def one_d(d, pos):  # MAE get_1d_sincos_pos_embed_from_grid, written from the formula
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    dim, g = 64, 5
    grid = np.meshgrid(np.arange(g, dtype=np.float64), np.arange(g, dtype=np.float64))  # (w, h) as in MAE
    ref = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
    got = sincos_pos_embed_2d(dim, g)
    assert got.shape == (g * g, dim)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-6)
    model = tiny_dit(input_size=8)
    assert "pos_embed" not in model.state_dict()  # fixed buffer, rebuilt from the config
    assert not any(p is model.pos_embed for p in model.parameters())
    np.testing.assert_allclose(model.pos_embed[0].numpy(), sincos_pos_embed_2d(64, 4).numpy())


def test_timestep_embedding_formula():
    t = torch.tensor([0, 7, 999])
    emb = timestep_embedding(t, 10)
    freqs = np.exp(-math.log(10000) * np.arange(5) / 5)
    args = t.numpy()[:, None] * freqs[None]
    np.testing.assert_allclose(emb.numpy(), np.concatenate([np.cos(args), np.sin(args)], 1), atol=1e-4)
    assert timestep_embedding(t, 7).shape == (3, 7)


def test_sdpa_attention_equals_explicit_softmax():
    torch.manual_seed(0)
    n, length, d, heads = 2, 5, 12, 3
    attn = SelfAttention(d, heads)
    x = torch.randn(n, length, d)
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(d, dim=-1)
    split = lambda z: z.view(n, length, heads, d // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    ref = (w @ v).transpose(1, 2).reshape(n, length, d) @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=1e-5)


def test_unet_config_lists_and_structure():
    cfg = UNetConfig(channel_mults=[1, 2, 2], attention_resolutions=[2, 4])  # as YAML loads them
    assert cfg.channel_mults == (1, 2, 2) and cfg.attention_resolutions == (2, 4)
    hash(cfg)
    model = UNet(UNetConfig(base_channels=32, channel_mults=(1, 2, 2), attention_resolutions=(4,)))
    n_attn = sum(isinstance(m, AttentionBlock) for m in model.modules())
    assert n_attn == 2 + 3 + 1  # rate-4 level: 2 down + 3 up blocks; plus the middle


@pytest.mark.parametrize("cls,kw,field", [
    (UNetConfig, {"input_size": 10}, "input_size"),  # 3 levels need a multiple of 4
    (UNetConfig, {"base_channels": 48}, "base_channels"),  # GroupNorm(32) on 48
    (UNetConfig, {"attention_resolutions": (8,)}, "attention_resolutions"),
    (UNetConfig, {"channel_mults": ()}, "channel_mults"),
    (UNetConfig, {"num_heads": 3}, "num_heads"),
    (UNetConfig, {"dropout": 1.0}, "dropout"),
    (UNetConfig, {"num_classes": 0}, "num_classes"),
    (UNetConfig, {"num_res_blocks": True}, "num_res_blocks"),
    (DiTConfig, {"input_size": 9}, "input_size"),
    (DiTConfig, {"hidden_size": 100}, "hidden_size"),  # 100 % 6
    (DiTConfig, {"hidden_size": 6, "num_heads": 1}, "hidden_size"),  # not divisible by 4
    (DiTConfig, {"mlp_ratio": 0}, "mlp_ratio"),
    (DiTConfig, {"depth": 0}, "depth"),
])
def test_bad_configs_name_the_field(cls, kw, field):
    with pytest.raises(ValueError, match=field):
        cls(**kw)


def test_bad_inputs():
    model = tiny_dit()
    x, t, y = batch(2, 4, 8)
    with pytest.raises(ValueError):
        model(torch.randn(2, 4, 16, 16), t, y)
    with pytest.raises(ValueError):
        tiny_unet()(torch.randn(2, 4, 7, 7), t, y)
    with pytest.raises(ValueError):
        model(x, t[:1], y)


def test_dit_s2_parameter_count():
    # DiT-S/2 is 33.0M (Peebles & Xie, Table 1); ours has 3 label rows instead of 1001 and no sigma output.
    model = DiT(DiTConfig(input_size=32, in_channels=4, patch_size=2, hidden_size=384, depth=12, num_heads=6))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 33.0e6) / 33.0e6 < 0.10, count
