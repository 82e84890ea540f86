"""Latent diffusion as a generator family: trains through the shared loop, resumes, samples."""

import numpy as np
import pytest
import torch

from histosynth.checkpoint import list_checkpoints
from histosynth.config_schema import train_config
from histosynth.errors import InputError
from histosynth.generative.generate import load_generator, sample_images
from histosynth.generative.ldm import LDMTrainer
from histosynth.generative.training import train_gan
from histosynth.generative.vae_training import VAETrainConfig, train_vae

MODELS = {
    "ldm_unet": {"base_channels": 32, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
                 "num_heads": 2},
    "ldm_dit": {"patch_size": 2, "hidden_size": 32, "depth": 1, "num_heads": 2},
}


def data(n=32, size=16):
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    x = rng.integers(0, 60, (n, size, size, 3)) + np.where(y[:, None, None, None] == 1, [150, 40, 120], [60, 30, 150])
    return x.clip(0, 255).astype(np.uint8), y


@pytest.fixture(scope="module")
def vae_path(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vae")
    x, _ = data()
    train_vae(x, x[:8], VAETrainConfig(model={"base_channels": 8, "channel_mults": [1, 2, 4], "mid_attention": False},
                                       epochs=1, batch_size=16, device="cpu"),
              model_path=tmp / "vae.pt", losses_path=tmp / "losses.tsv", metrics_path=tmp / "metrics.json")
    return tmp / "vae.pt"


def cfg(family, **kw):
    return train_config(**{"family": family, "model": MODELS[family], "epochs": 3, "batch_size": 16, "lr": 1e-3,
                           "betas": (0.9, 0.999), "save_from": 1, "save_every": 1, "device": "cpu",
                           "diffusion": {"timesteps": 100, "ema_decay": 0.9}, **kw})


@pytest.mark.parametrize("family", list(MODELS))
def test_trains_resumes_to_the_same_weights_and_samples(tmp_path, monkeypatch, vae_path, family):
    x, y = data()
    train_gan(x, y, 2, tmp_path / "full", tmp_path / "full.tsv", cfg(family), vae_path=vae_path)
    assert [e for e, _ in list_checkpoints(tmp_path / "full")] == [2, 3]
    assert (tmp_path / "full.tsv").read_text().splitlines()[0].split("\t")[:2] == ["epoch", "loss"]

    real_step, calls = LDMTrainer.step, []

    def dies_in_epoch_3(self, *a, **k):
        calls.append(1)
        if len(calls) == 5:  # 2 batches per epoch: the 5th step is epoch 3's first
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(LDMTrainer, "step", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train_gan(x, y, 2, tmp_path / "killed", tmp_path / "killed.tsv", cfg(family), vae_path=vae_path)
    monkeypatch.setattr(LDMTrainer, "step", real_step)
    train_gan(x, y, 2, tmp_path / "killed", tmp_path / "killed.tsv", cfg(family), vae_path=vae_path)
    full = torch.load(tmp_path / "full/epoch_00003.pt", weights_only=True)
    resumed = torch.load(tmp_path / "killed/epoch_00003.pt", weights_only=True)
    assert full["G"].keys() == resumed["G"].keys()
    assert all(torch.equal(v, resumed["G"][k]) for k, v in full["G"].items())
    # The snapshot holds the EMA weights, not the raw ones, and carries its VAE.
    state = torch.load(tmp_path / "full/resume.pt", weights_only=True)
    assert any(not torch.equal(state["G"][k], v) for k, v in state["ema"].items() if v.is_floating_point())
    assert set(full["vae"]) >= {"model", "state", "latent_scale"}

    snapshot = tmp_path / "full/epoch_00003.pt"
    for sampling in ({"steps": 5}, {"steps": 2, "clip_x0": None}, {"method": "ddpm", "clip_x0": 0.5}):
        G = load_generator(snapshot, "cpu", sampling)
        images = sample_images(G, np.array([0, 1, 0]), np.array([7, 8, 9]), 2, "cpu")
        assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
        # Each image depends only on its own seed and label, not on its batch.
        again = sample_images(G, np.array([1, 0]), np.array([8, 9]), 2, "cpu")
        assert np.array_equal(images[1:], again), sampling


def test_latent_diffusion_needs_its_vae(tmp_path):
    x, y = data()
    with pytest.raises(InputError, match="needs VAE"):
        train_gan(x, y, 2, tmp_path / "c", tmp_path / "l.tsv", cfg("ldm_unet"))
    bad = tmp_path / "not_a_vae.pt"
    torch.save({"G": {}}, bad)
    with pytest.raises(InputError, match="not_a_vae.pt"):
        train_gan(x, y, 2, tmp_path / "c", tmp_path / "l.tsv", cfg("ldm_unet"), vae_path=bad)


def test_bad_sampler_settings_are_a_clear_error(tmp_path, vae_path):
    x, y = data()
    train_gan(x, y, 2, tmp_path / "c", tmp_path / "l.tsv", cfg("ldm_dit", epochs=2), vae_path=vae_path)
    for bad in ({"method": "euler"}, {"steps": 1}, {"clip_x0": -1}, {"clip_x0": "max"}):
        with pytest.raises(InputError, match="sampling"):
            load_generator(tmp_path / "c/epoch_00002.pt", "cpu", bad)
    # auto: the clamp is the VAE's latent range; a number overrides it, null turns it off
    vae_range = torch.load(vae_path, weights_only=True)["latent_range"]
    snapshot = tmp_path / "c/epoch_00002.pt"
    assert load_generator(snapshot, "cpu").clip_x0 == vae_range > 0
    assert load_generator(snapshot, "cpu", {"clip_x0": 2.5}).clip_x0 == 2.5
    assert load_generator(snapshot, "cpu", {"clip_x0": None}).clip_x0 is None
