"""Scoring snapshots and bulk generation from a tiny trained HistoGAN."""

import h5py
import numpy as np
import pandas as pd
import pytest

from histosynth.config_schema import train_config
from histosynth.data.store import read_store
from histosynth.evaluation.features import extract_features, gaussian_stats
from histosynth.evaluation.scoring import score_checkpoints
from histosynth.generative.generate import generate_pool, load_generator, sample_images
from histosynth.generative.training import train_gan
from test_gan_training import TINY, data


class MeanColour:
    """A stand-in feature extractor: per-channel means and stds (6-D)."""

    def to(self, device):
        return self

    def eval(self):
        return self

    def __call__(self, x):
        import torch

        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gan")
    x, y = data()
    cfg = train_config(family="histogan", model=TINY, epochs=3, batch_size=8, save_from=1, device="cpu")
    train_gan(x, y, 2, tmp / "ckpt", tmp / "losses.tsv", cfg)
    return tmp, x


def test_score_every_snapshot(trained, tmp_path):
    tmp, x = trained
    feats = extract_features(MeanColour(), x)
    mu, sigma = gaussian_stats(feats)
    real = {"mu": mu, "sigma": sigma, "features": feats}
    table = score_checkpoints(tmp / "ckpt", {"domain": (MeanColour(), real), "inception": (MeanColour(), real)},
                              {0: 6, 1: 6}, tmp_path / "scores.tsv")
    assert table.epoch.tolist() == [2, 3] and (table.fid >= -1e-6).all()
    # Both feature spaces score the same images: the same extractor gives the same numbers.
    np.testing.assert_allclose(table.fid, table.fid_inception)
    np.testing.assert_allclose(table.kid, table.kid_inception)
    written = pd.read_csv(tmp_path / "scores.tsv", sep="\t")
    assert list(written.columns) == ["epoch", "fid", "kid", "kid_std", "precision", "recall", "fid_inception",
                                     "kid_inception", "kid_inception_std", "precision_inception", "recall_inception"]
    assert ((0 <= table.precision) & (table.precision <= 1) & (0 <= table.recall) & (table.recall <= 1)).all()
    np.testing.assert_allclose(table.precision, table.precision_inception)


def test_pool_counts_seeds_and_regeneration(trained, tmp_path):
    tmp, _ = trained
    snap = tmp / "ckpt/epoch_00003.pt"
    generate_pool(snap, {0: 5, 1: 3}, ["normal", "tumor"], tmp_path / "pool.h5",
                  grid_png=tmp_path / "grid.png", batch_size=4)
    images, labels, names = read_store(tmp_path / "pool.h5")
    assert images.shape == (8, 32, 32, 3) and labels.tolist() == [0] * 5 + [1] * 3 and names == ["normal", "tumor"]
    with h5py.File(tmp_path / "pool.h5") as f:
        seeds = f["seeds"][:]
    # Image 6 alone, from its stored seed, is the same picture.
    again = sample_images(load_generator(snap), labels[6:7], seeds[6:7])
    np.testing.assert_array_equal(again[0], images[6])
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_bn_generator_samples_with_standing_statistics(tmp_path):
    """Eval-mode samples of a batch-norm generator must look like its train-mode samples.

    A fresh HistoGAN's running statistics (mean 0, var 1) are far from its batch statistics,
    as a trained one's lag behind its weights; load_generator recomputes them. Per-channel
    image mean/std of 256 samples then match train mode, where the stale statistics miss."""
    import torch
    from dataclasses import asdict

    from histosynth.generative.models.histogan import Generator, HistoGANConfig

    torch.manual_seed(0)
    G = Generator(HistoGANConfig(image_size=32, num_classes=2, **TINY))
    torch.save({"family": "histogan", "model": asdict(G.cfg), "G": G.state_dict()}, tmp_path / "snap.pt")
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(256, G.cfg.z_dim, generator=g), torch.randint(0, 2, (256,), generator=g)

    def stats(model):
        with torch.no_grad():
            x = model(z, y)[-1]
        return torch.cat([x.mean((0, 2, 3)), x.std((0, 2, 3))])

    train_mode = stats(G.train())
    stale = stats(G.eval())
    standing = stats(load_generator(tmp_path / "snap.pt"))
    assert (standing - train_mode).abs().max() < 0.02
    assert (stale - train_mode).abs().max() > 0.05
    # deterministic: loading twice gives the same images
    G2 = load_generator(tmp_path / "snap.pt")
    assert torch.equal(stats(G2), standing)


def test_scoring_latents_are_never_pool_latents(trained, tmp_path, monkeypatch):
    """The images a snapshot is chosen on must not be its pool's first images (same default seed 0)."""
    import histosynth.evaluation.scoring as scoring_module
    import histosynth.generative.generate as gen

    tmp, x = trained
    drawn = []
    real_sample = gen.sample_images
    record = lambda G, labels, seeds, *a, **k: drawn.append(seeds.copy()) or real_sample(G, labels, seeds, *a, **k)  # noqa: E731
    monkeypatch.setattr(gen, "sample_images", record)
    monkeypatch.setattr(scoring_module, "sample_images", record)
    feats = extract_features(MeanColour(), x)
    mu, sigma = gaussian_stats(feats)
    scoring_module.score_checkpoints(tmp / "ckpt", {"domain": (MeanColour(), {"mu": mu, "sigma": sigma, "features": feats})},
                          {0: 6, 1: 6}, tmp_path / "scores.tsv", seed=0)
    gen.generate_pool(tmp / "ckpt/epoch_00003.pt", {0: 6, 1: 6}, ["a", "b"], tmp_path / "pool.h5", seed=0)
    scoring, pool = drawn[0], drawn[-1]
    assert all(np.array_equal(d, scoring) for d in drawn[:-1])  # every snapshot on the same latents
    assert not set(scoring) & set(pool)
    # and for any seeds the schema allows, with top-up draws of up to 2**40 images past a pool
    top = gen.image_seeds(2**31 - 1, 1)[0] + 2**40
    assert top < gen.image_seeds(0, 1, gen.SCORING_STREAM)[0]
    assert gen.image_seeds(2**31 - 1, 10, gen.SCORING_STREAM).max() < np.iinfo(np.int64).max
