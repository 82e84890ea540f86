"""Scoring snapshots and bulk generation from a tiny trained HistoGAN."""

import h5py
import numpy as np
import pandas as pd
import pytest

from histosynth.features import extract_features, gaussian_stats
from histosynth.gan_training import GANTrainConfig, train_gan
from histosynth.generate import generate_pool, load_generator, sample_images, score_checkpoints
from histosynth.store import read_store
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
    cfg = GANTrainConfig(family="histogan", model=TINY, epochs=3, batch_size=8, save_from=1, device="cpu")
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
    assert list(written.columns) == ["epoch", "fid", "kid", "kid_std", "fid_inception", "kid_inception",
                                     "kid_inception_std"]


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
