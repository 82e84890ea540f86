"""KL autoencoder model and its training stage: shapes, loss, resume equivalence, checkpoint format."""

import json

import numpy as np
import pytest
import torch

import histosynth.generative.vae_training as vt
from histosynth.errors import InputError
from histosynth.generative.models.vae import VAE, VAEConfig, vae_loss
from histosynth.generative.vae_training import VAETrainConfig, load_vae, train_vae

TINY = {"base_channels": 8, "channel_mults": [1, 2], "latent_channels": 2}


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize("mults,factor", [((1, 2, 4), 4), ([1, 2, 2, 2], 8)])
def test_encode_decode_shapes(mults, factor):
    cfg = VAEConfig(image_size=32, base_channels=8, channel_mults=mults, latent_channels=4)
    assert cfg.channel_mults == tuple(mults) and cfg.downsample == factor and cfg.latent_size == 32 // factor
    torch.manual_seed(0)
    vae = VAE(cfg)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (2, 4, cfg.latent_size, cfg.latent_size)
    assert vae.decode(mean).shape == x.shape
    recon, m2, _ = vae(x)
    assert recon.shape == x.shape and torch.equal(m2, mean)


def test_sample_latent_uses_generator_and_logvar_is_clamped():
    mean = torch.zeros(2, 4, 3, 3)
    z1 = VAE.sample_latent(mean, torch.zeros_like(mean), torch.Generator().manual_seed(1))
    z2 = VAE.sample_latent(mean, torch.zeros_like(mean), torch.Generator().manual_seed(1))
    assert torch.equal(z1, z2) and z1.std() > 0.5
    vae = VAE(VAEConfig(image_size=16, **TINY))
    with torch.no_grad():
        vae.encoder.conv_out.bias[2:].fill_(-1000.0)  # logvar channels
    assert vae.encode(torch.zeros(1, 3, 16, 16))[1].min() == -30.0


@pytest.mark.parametrize("bad,field", [
    ({"image_size": 30, "channel_mults": (1, 2, 4)}, "image_size"),
    ({"channel_mults": ()}, "channel_mults"),
    ({"channel_mults": [1, 0]}, "channel_mults"),
    ({"base_channels": 0}, "base_channels"),
    ({"latent_channels": 2.5}, "latent_channels"),
    ({"kl_weight": -1.0}, "kl_weight"),
    ({"dropout": 1.0}, "dropout"),
])
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ValueError, match=f"VAEConfig.{field}"):
        VAEConfig(**{"image_size": 32, **bad})


def smooth_images(n=4, size=16, seed=0):
    """Smooth colour gradients in [-1, 1]: easy to reconstruct, so the loss must fall fast."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-1, 1, size)
    a = torch.rand(n, 3, 1, 1, generator=g) * 2 - 1
    b = torch.rand(n, 3, 1, 1, generator=g) * 2 - 1
    return (0.6 * a * ramp.view(1, 1, -1, 1) + 0.3 * b * ramp.view(1, 1, 1, -1)).clamp(-1, 1)


def test_loss_decreases_with_adam():
    torch.manual_seed(0)
    vae = VAE(VAEConfig(image_size=16, **TINY))
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    x = smooth_images()
    losses = []
    for _ in range(30):
        loss, _, _ = vae_loss(x, *vae(x), kl_weight=1e-6)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])


def test_vae_loss_terms_match_closed_forms():
    g = torch.Generator().manual_seed(0)
    x, recon = torch.randn(3, 3, 4, 4, generator=g), torch.randn(3, 3, 4, 4, generator=g)
    mean, logvar = torch.randn(3, 2, 2, 2, generator=g), torch.randn(3, 2, 2, 2, generator=g)
    total, rec, kl = vae_loss(x, recon, mean, logvar, kl_weight=0.1)
    assert rec.item() == pytest.approx((x - recon).abs().mean().item(), rel=1e-6)
    posterior = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    prior = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(posterior, prior).sum(dim=(1, 2, 3)).mean()
    assert kl.item() == pytest.approx(expected.item(), rel=1e-5)
    # by hand, one element: KL(N(m, s^2) || N(0, 1)) = (m^2 + s^2 - 1 - log s^2) / 2
    _, _, kl1 = vae_loss(x[:1], recon[:1], torch.full((1, 1, 1, 1), 0.5), torch.full((1, 1, 1, 1), np.log(2.0)), 0.0)
    assert kl1.item() == pytest.approx((0.25 + 2 - 1 - np.log(2.0)) / 2, rel=1e-6)
    assert total.item() == pytest.approx(rec.item() + 0.1 * kl.item(), rel=1e-6)


# ----------------------------------------------------------------------------- training stage


def data(n=8, size=16, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 200, (n, 1, 1, 3))
    ramp = np.linspace(0, 50, size).astype(np.int64)
    return (base + ramp[None, :, None, None] + rng.integers(0, 10, (n, size, size, 3))).clip(0, 255).astype(np.uint8)


def cfg(**kw):
    return VAETrainConfig(**{"model": TINY, "epochs": 2, "batch_size": 4, "lr": 1e-3, "device": "cpu", **kw})


def run(tmp_path, name, c, images, valid, resume=True):
    return train_vae(images, valid, c, model_path=tmp_path / f"{name}.pt", losses_path=tmp_path / f"{name}.tsv",
                     metrics_path=tmp_path / f"{name}.json",
                     resume_path=tmp_path / f"{name}.resume.pt" if resume else None)


def test_train_writes_outputs_and_load_round_trips(tmp_path):
    x, v = data(), data(4, seed=1)
    metrics = run(tmp_path, "a", cfg(), x, v)
    assert not (tmp_path / "a.resume.pt").exists()
    lines = (tmp_path / "a.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["epoch", "loss", "recon", "kl", "seconds"] and len(lines) == 3
    saved = json.loads((tmp_path / "a.json").read_text())
    assert saved["latent_shape"] == [2, 8, 8] and saved["n_train"] == 8 and saved["n_valid"] == 4
    assert saved["latent_scale"] == metrics["latent_scale"] > 0
    assert 0 < saved["valid_mae"] < 1 and 0 < saved["valid_mse"] < 1
    assert saved["valid_psnr"] == pytest.approx(10 * np.log10(1 / saved["valid_mse"]))

    ckpt = torch.load(tmp_path / "a.pt", weights_only=True)
    assert set(ckpt) == {"model", "state", "latent_scale", "latent_range", "epoch"} and ckpt["epoch"] == 2
    vae, scale = load_vae(tmp_path / "a.pt")
    assert not vae.training and scale == metrics["latent_scale"]
    assert vae.cfg == VAEConfig(image_size=16, **TINY)
    assert all(torch.equal(ckpt["state"][k], p) for k, p in vae.state_dict().items())
    # the scale makes the training latents unit-variance
    z = vt.encode_images(vae, x) * scale
    assert z.shape == (8, 2, 8, 8) and z.double().std().item() == pytest.approx(1.0, rel=1e-3)
    # latent_range, the samplers' default x0 clamp, is the largest |scaled training latent|
    assert ckpt["latent_range"] == pytest.approx(z.abs().max().item(), rel=1e-5) == saved["latent_range"]


def test_killed_run_resumes_to_identical_weights(tmp_path, monkeypatch):
    x, v = data(), data(4, seed=1)
    c = cfg(epochs=3)
    run(tmp_path, "full", c, x, v)

    real_loss, calls = vt.vae_loss, []

    def dies_in_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # 2 batches per epoch: the 3rd step is epoch 2's first
            raise KeyboardInterrupt
        return real_loss(*a, **k)

    monkeypatch.setattr(vt, "vae_loss", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "killed", c, x, v)
    assert (tmp_path / "killed.resume.pt").exists() and not (tmp_path / "killed.pt").exists()
    monkeypatch.setattr(vt, "vae_loss", real_loss)
    run(tmp_path, "killed", c, x, v)

    full = torch.load(tmp_path / "full.pt", weights_only=True)
    resumed = torch.load(tmp_path / "killed.pt", weights_only=True)
    for k, w in full["state"].items():
        assert torch.equal(w, resumed["state"][k]), k
    assert full["latent_scale"] == resumed["latent_scale"]
    drop_seconds = lambda p: [line.split("\t")[:-1] for line in p.read_text().splitlines()]  # noqa: E731
    assert drop_seconds(tmp_path / "full.tsv") == drop_seconds(tmp_path / "killed.tsv")


def test_resume_state_of_other_data_or_settings_is_ignored(tmp_path, capsys):
    x, v = data(), data(4, seed=1)
    fresh = run(tmp_path, "a", cfg(epochs=1), x, v)
    # A state left by a run on other images (same settings) must not be continued.
    torch.save({"key": "another run", "epoch": 1, "model": {}, "history": []}, tmp_path / "a.resume.pt")
    again = run(tmp_path, "a", cfg(epochs=1), x, v)
    assert "from other settings, code or data; training from epoch 1" in capsys.readouterr().out
    assert again["latent_scale"] == fresh["latent_scale"]


def test_divergence_names_the_epoch(tmp_path, monkeypatch):
    def nan_loss(x, recon, mean, logvar, kl_weight):
        nan = (recon.sum() * float("nan"))
        return nan, nan, nan

    monkeypatch.setattr(vt, "vae_loss", nan_loss)
    with pytest.raises(RuntimeError, match="diverged at epoch 1"):
        run(tmp_path, "n", cfg(), data(), data(4))


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="VAE model settings"):
        run(tmp_path, "b", cfg(model={**TINY, "channel_mults": [1, 1, 1, 1, 1, 1]}), data(), data(4))
    with pytest.raises(InputError, match="uint8"):
        run(tmp_path, "b", cfg(), data().astype(np.float32), data(4))
    with pytest.raises(InputError, match=str(tmp_path / "missing.pt")):
        load_vae(tmp_path / "missing.pt")
    other = tmp_path / "classifier.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(InputError, match=f"{other}: not a VAE checkpoint"):
        load_vae(other)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a torch file")
    with pytest.raises(InputError, match=f"{junk}: not a VAE checkpoint"):
        load_vae(junk)
