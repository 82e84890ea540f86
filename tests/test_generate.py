"""Scoring snapshots as training writes them, keeping what selection needs, and bulk generation
from a tiny trained HistoGAN."""

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from histosynth.config_schema import train_config
from histosynth.data.store import read_store
from histosynth.evaluation.features import extract_features, gaussian_stats
from histosynth.checkpoint import list_checkpoints
from histosynth.evaluation.scoring import CheckpointScorer
from histosynth.evaluation.selection import ALPHAS, kept_epochs, select_checkpoint
from histosynth.generative.families import family_module
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


def mean_colour_scorer(x, **kw):
    """A CheckpointScorer of 6 images per class in two feature spaces, both MeanColour."""
    feats = extract_features(MeanColour(), x)
    mu, sigma = gaussian_stats(feats)
    real = {"mu": mu, "sigma": sigma, "features": feats}
    return CheckpointScorer({"domain": (MeanColour(), real), "inception": (MeanColour(), real)}, {0: 6, 1: 6}, **kw)


EPOCHS = 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The same run twice: keeping every snapshot (no scorer: `all`), and scoring each as it is
    written, keeping only those a selection could choose (`ckpt`)."""
    tmp = tmp_path_factory.mktemp("gan")
    x, y = data()
    cfg = train_config(family="histogan", model=TINY, epochs=EPOCHS, batch_size=8, save_from=0, device="cpu")
    train_gan(x, y, 2, tmp / "all", tmp / "all.tsv", cfg)
    train_gan(x, y, 2, tmp / "ckpt", tmp / "losses.tsv", cfg, scorer=lambda device: mean_colour_scorer(x),
              scores_path=tmp / "scores.tsv")
    return tmp, x


def test_snapshots_are_scored_as_written(trained):
    tmp, x = trained
    table = pd.read_csv(tmp / "scores.tsv", sep="\t")
    assert list(table.columns) == ["epoch", "fid", "kid", "kid_std", "precision", "recall", "fid_inception",
                                   "kid_inception", "kid_inception_std", "precision_inception", "recall_inception"]
    assert table.epoch.tolist() == list(range(1, EPOCHS + 1)) and (table.fid >= -1e-6).all()
    # Both feature spaces score the same images: the same extractor gives the same numbers.
    np.testing.assert_allclose(table.fid, table.fid_inception, rtol=1e-5)
    np.testing.assert_allclose(table.kid, table.kid_inception, rtol=1e-5, atol=1e-6)
    assert ((0 <= table.precision) & (table.precision <= 1) & (0 <= table.recall) & (table.recall <= 1)).all()
    # Scored during training = scored afterwards from the file, every snapshot of the unscored run.
    score = mean_colour_scorer(x)
    for epoch, path in list_checkpoints(tmp / "all"):
        row = table[table.epoch == epoch].iloc[0]
        assert score(path) == pytest.approx({k: row[k] for k in table.columns if k != "epoch"}, rel=1e-5, abs=1e-6)


def test_training_keeps_every_snapshot_a_selection_can_choose_and_the_same_pool(trained, tmp_path):
    tmp, _ = trained
    scores = pd.read_csv(tmp / "scores.tsv", sep="\t")
    kept = [e for e, _ in list_checkpoints(tmp / "ckpt")]
    assert set(kept) == kept_epochs(scores) and len(kept) < EPOCHS  # some were removed
    for metric in ("fid", "kid", "fid_inception", "kid_inception"):
        for alpha in ALPHAS:
            assert select_checkpoint(scores, metric, alpha)[0] in kept, (metric, alpha)
    # Never more on disk than the kept ones, this epoch's and the previous epoch's choices.
    on_disk = pd.read_csv(tmp / "losses.tsv", sep="\t")["snapshots_on_disk"]
    assert on_disk.max() <= 4 * len(ALPHAS) + 2 and on_disk.iloc[-1] >= len(kept)
    # Scoring leaves training alone: the kept snapshots are the unscored run's, bit for bit, and
    # so is the pool of the selected one.
    best, _ = select_checkpoint(scores, "fid", 0.5)
    for epoch in kept:
        a, b = (torch.load(d / f"epoch_{epoch:05d}.pt", weights_only=True) for d in (tmp / "all", tmp / "ckpt"))
        assert all(torch.equal(v, b["G"][k]) for k, v in a["G"].items())
    for d in ("all", "ckpt"):
        generate_pool(tmp / d / f"epoch_{best:05d}.pt", {0: 5, 1: 3}, ["a", "b"], tmp_path / f"{d}.h5")
    np.testing.assert_array_equal(read_store(tmp_path / "all.h5")[0], read_store(tmp_path / "ckpt.h5")[0])


def test_a_killed_scoring_run_resumes_to_the_same_scores_and_snapshots(trained, tmp_path, monkeypatch, capsys):
    tmp, x = trained
    adapter = family_module("histogan").Trainer
    real_step, calls = adapter.step, []

    def dies_in_epoch_5(self, *a, **k):
        calls.append(1)
        if len(calls) == 9:  # 2 batches per epoch: the 9th step is epoch 5's first
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    def scorer(device):  # its construction draws random numbers, as a ResNet extractor's init does
        torch.randn(100)
        return mean_colour_scorer(x)

    cfg = train_config(family="histogan", model=TINY, epochs=EPOCHS, batch_size=8, save_from=0, device="cpu")
    run = lambda key="": train_gan(x, y, 2, tmp_path / "ckpt", tmp_path / "losses.tsv", cfg,  # noqa: E731
                                   scorer=scorer, scores_path=tmp_path / "scores.tsv", scoring_key=key)
    _, y = data()
    monkeypatch.setattr(adapter, "step", dies_in_epoch_5)
    with pytest.raises(KeyboardInterrupt):
        run()
    assert not (tmp_path / "scores.tsv").exists()
    monkeypatch.setattr(adapter, "step", real_step)
    run()
    assert (tmp_path / "scores.tsv").read_text() == (tmp / "scores.tsv").read_text()
    assert [e for e, _ in list_checkpoints(tmp_path / "ckpt")] == [e for e, _ in list_checkpoints(tmp / "ckpt")]
    losses = [pd.read_csv(d / "losses.tsv", sep="\t").drop(columns="seconds") for d in (tmp, tmp_path)]
    pd.testing.assert_frame_equal(*losses)
    # Other scoring settings never resume: the snapshots they would keep are gone.
    capsys.readouterr()
    run("images_per_class=8")
    assert "is from other settings, code or data; training from epoch 1" in capsys.readouterr().out
    assert "snapshots_on_disk" in pd.read_csv(tmp_path / "losses.tsv", sep="\t")
    assert len(list_checkpoints(tmp_path / "ckpt")) == len(kept_epochs(pd.read_csv(tmp_path / "scores.tsv", sep="\t")))


def test_pool_counts_seeds_and_regeneration(trained, tmp_path):
    tmp, _ = trained
    snap = tmp / "all/epoch_00003.pt"
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
    score = mean_colour_scorer(x, seed=0)
    for _, path in list_checkpoints(tmp / "all"):
        score(path)
    gen.generate_pool(tmp / "all/epoch_00003.pt", {0: 6, 1: 6}, ["a", "b"], tmp_path / "pool.h5", seed=0)
    scoring, pool = drawn[0], drawn[-1]
    assert all(np.array_equal(d, scoring) for d in drawn[:-1])  # every snapshot on the same latents
    assert not set(scoring) & set(pool)
    # and for any seeds the schema allows, with top-up draws of up to 2**40 images past a pool
    top = gen.image_seeds(2**31 - 1, 1)[0] + 2**40
    assert top < gen.image_seeds(0, 1, gen.SCORING_STREAM)[0]
    assert gen.image_seeds(2**31 - 1, 10, gen.SCORING_STREAM).max() < np.iinfo(np.int64).max


def test_a_kept_snapshot_deleted_by_hand_retrains_instead_of_resuming(trained, tmp_path, capsys):
    import shutil

    tmp, x = trained
    shutil.copytree(tmp / "ckpt", tmp_path / "ckpt")
    kept = list_checkpoints(tmp_path / "ckpt")
    kept[0][1].unlink()
    _, y = data()
    cfg = train_config(family="histogan", model=TINY, epochs=EPOCHS, batch_size=8, save_from=0, device="cpu")
    train_gan(x, y, 2, tmp_path / "ckpt", tmp_path / "losses.tsv", cfg, scorer=lambda device: mean_colour_scorer(x),
              scores_path=tmp_path / "scores.tsv")
    assert f"the snapshots of epochs [{kept[0][0]}]" in capsys.readouterr().out
    assert [e for e, _ in list_checkpoints(tmp_path / "ckpt")] == [e for e, _ in kept]
    assert (tmp_path / "scores.tsv").read_text() == (tmp / "scores.tsv").read_text()
