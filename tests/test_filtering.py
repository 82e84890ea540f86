"""The filter stage on a real (tiny) generator pool: every filter, exact counts, top-up draws."""

import json

import numpy as np
import pytest
import torch

from histosynth.classification.classifier import build_classifier
from histosynth.config_schema import train_config
from histosynth.data.store import read_extra, read_store
from histosynth.errors import InputError
from histosynth.evaluation.features import domain_extractor, extract_features
from histosynth.evaluation.filtering import FilterConfig, filter_pool
from histosynth.evaluation.draws import target_counts
from histosynth.generative.generate import generate_pool
from histosynth.generative.training import train_gan
from test_gan_training import TINY, data


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("filtering")
    x, y = data(n=16)
    train_gan(x, y, 2, tmp / "ckpt", tmp / "losses.tsv",
              train_config(family="histogan", model=TINY, epochs=2, batch_size=8, save_from=1, device="cpu"))
    snapshot = tmp / "ckpt/epoch_00002.pt"
    targets = target_counts(y, 2, 0.5)  # 4 per class
    generate_pool(snapshot, {c: 4 * n for c, n in targets.items()}, ["normal", "tumor"], tmp / "pool.h5",
                  batch_size=16)
    torch.manual_seed(0)
    torch.save(build_classifier("resnet18", 2).state_dict(), tmp / "model.pt")
    real_features = extract_features(domain_extractor(tmp / "model.pt", "resnet18", 2), x)
    return tmp, x, y, real_features, snapshot


def run(setup, tmp_path, **cfg):
    tmp, x, y, real_features, snapshot = setup
    summary = filter_pool(FilterConfig(**cfg), tmp / "pool.h5", x, y, real_features, tmp / "model.pt", "resnet18",
                          snapshot, tmp_path / "selected.h5", tmp_path / "summary.json")
    images, labels, _ = read_store(tmp_path / "selected.h5")
    return summary, images, labels


@pytest.mark.parametrize("name", ["none", "selective", "realism", "realism_class", "confidence"])
def test_every_filter_keeps_exactly_r_n_per_class(setup, tmp_path, name):
    cfg = {"name": name, "batch_size": 16, "mc_passes": 2, "realism_threshold": 0.0, "confidence_threshold": 0.0}
    summary, images, labels = run(setup, tmp_path, **cfg)
    assert np.bincount(labels).tolist() == [4, 4] and images.shape == (8, 32, 32, 3)
    assert summary["kept"] == {"normal": 4, "tumor": 4} and summary["drawn"] == 0
    assert json.loads((tmp_path / "summary.json").read_text())["filter"] == name
    pool, pool_labels, _ = read_store(setup[0] / "pool.h5")
    idx = read_extra(tmp_path / "selected.h5", "pool_index")
    np.testing.assert_array_equal(images, pool[idx])  # the kept images are the pool's, unchanged
    np.testing.assert_array_equal(labels, pool_labels[idx])
    if name == "none":
        assert idx.tolist() == [0, 1, 2, 3, 16, 17, 18, 19]
    if name == "selective":
        assert read_extra(tmp_path / "selected.h5", "entropy").shape == (8,)


def test_threshold_filter_draws_more_until_the_target_is_met(setup, tmp_path, monkeypatch):
    import histosynth.evaluation.filtering as filtering

    # One image in 8 passes: the pool (16 per class) gives 2 of the 4 wanted per class,
    # so 32 more per class are drawn from the generator, of which 4 pass.
    monkeypatch.setattr(filtering._Scorer, "_realism",
                        lambda self, images, labels, features=None: (np.arange(len(images)) % 8 == 0).astype(float))
    summary, images, labels = run(setup, tmp_path, name="realism", batch_size=16, realism_threshold=0.5)
    assert np.bincount(labels).tolist() == [4, 4] and summary["drawn"] == 64
    idx = read_extra(tmp_path / "selected.h5", "pool_index")
    assert idx.tolist() == [0, 8, 16, 24, 32, 40, 64, 72]  # first passing ones, pool order, then the draws
    # Drawn images carry fresh seeds (after the pool's), so each can be regenerated.
    pool_seeds = read_extra(setup[0] / "pool.h5", "seeds")
    seeds = read_extra(tmp_path / "selected.h5", "seeds")
    assert len(set(seeds.tolist())) == 8 and (seeds[idx >= 32] > pool_seeds.max()).all()


def test_a_threshold_nothing_passes_gives_up_with_a_clear_error(setup, tmp_path):
    with pytest.raises(InputError, match="still short of 4 normal, 4 tumor"):
        run(setup, tmp_path, name="confidence", batch_size=16, confidence_threshold=0.999999, max_draw_factor=1)
    assert not (tmp_path / "selected.h5").exists()


def test_unknown_filter():
    with pytest.raises(InputError, match="not one of"):
        FilterConfig(name="magic")


def test_confidence_filter_on_a_vitgan_pool_uses_its_own_class_head(setup, tmp_path):
    from histosynth.evaluation.filtering import _critic
    from test_gan_training import VITGAN_TINY

    tmp, x, y, real_features, _ = setup
    train_gan(x, y, 2, tmp_path / "vit", tmp_path / "losses.tsv",
              train_config(family="vitgan", model=VITGAN_TINY, epochs=2, batch_size=8, save_from=1, device="cpu"))
    snapshot = tmp_path / "vit/epoch_00002.pt"
    generate_pool(snapshot, {0: 16, 1: 16}, ["normal", "tumor"], tmp_path / "pool.h5", batch_size=16)
    summary = filter_pool(FilterConfig(name="confidence", batch_size=16, confidence_threshold=0.0),
                          tmp_path / "pool.h5", x, y, real_features, tmp / "model.pt", "resnet18", snapshot,
                          tmp_path / "selected.h5", tmp_path / "summary.json")
    assert summary["kept"] == {"normal": 4, "tumor": 4}
    pool, labels, _ = read_store(tmp_path / "pool.h5")
    idx = read_extra(tmp_path / "selected.h5", "pool_index")
    expected = _critic(snapshot, "cpu")(pool[idx])[np.arange(len(idx)), labels[idx]]
    np.testing.assert_allclose(read_extra(tmp_path / "selected.h5", "score"), expected, rtol=1e-6)
    assert _critic(setup[4], "cpu") is None  # HistoGAN snapshots keep the domain classifier


@pytest.mark.parametrize("name", ["none", "selective", "realism", "confidence"])
def test_exclude_copies_passes_over_the_likely_copies(setup, tmp_path, name):
    """Three pool images are also training images: with exclude_copies every filter keeps its
    r·N_i per class without them (the audit's rule, thresholds from a reference file)."""
    tmp, x, y, _, snapshot = setup
    pool, pool_labels, _ = read_store(tmp / "pool.h5")
    copies = [0, 2, 16]
    real = np.concatenate([x, pool[copies]])
    real_y = np.concatenate([y, pool_labels[copies]])
    feats = extract_features(domain_extractor(tmp / "model.pt", "resnet18", 2), real)
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps({"memorisation": {"thresholds": {"domain": 1e-3, "pixel": 1e-3}}}))
    cfg = FilterConfig(name=name, batch_size=16, mc_passes=2, realism_threshold=0.0, confidence_threshold=0.0,
                       ratio=0.4, exclude_copies=True)  # r·N_i = 4 of the 10 normal and 9 tumour images
    summary = filter_pool(cfg, tmp / "pool.h5", real, real_y, feats, tmp / "model.pt", "resnet18", snapshot,
                          tmp_path / "selected.h5", tmp_path / "summary.json", reference_path=reference)
    idx = read_extra(tmp_path / "selected.h5", "pool_index")
    assert not set(idx.tolist()) & set(copies) and summary["kept"] == {"normal": 4, "tumor": 4}
    assert summary["copies_excluded"] == 3
    if name == "none":
        assert idx.tolist() == [1, 3, 4, 5, 17, 18, 19, 20]  # the next pool images
    without = filter_pool(FilterConfig(name="none", ratio=0.4), tmp / "pool.h5", real, real_y, feats,
                          tmp / "model.pt", "resnet18", snapshot, tmp_path / "plain.h5", tmp_path / "plain.json")
    assert "copies_excluded" not in without
    assert read_extra(tmp_path / "plain.h5", "pool_index").tolist()[:2] == [0, 1]  # off: copies kept


@pytest.mark.parametrize("name", ["realism", "realism_class"])
def test_cached_pool_features_give_the_same_selection(setup, tmp_path, name):
    """The pool's features from rule pool_features stand in for extracting them again."""
    tmp, x, y, real_features, snapshot = setup
    pool, _, _ = read_store(tmp / "pool.h5")
    cached = extract_features(domain_extractor(tmp / "model.pt", "resnet18", 2), pool)
    cfg = FilterConfig(name=name, batch_size=16, realism_threshold=0.5)
    kept = []
    for i, features in enumerate((None, cached)):
        filter_pool(cfg, tmp / "pool.h5", x, y, real_features, tmp / "model.pt", "resnet18", snapshot,
                    tmp_path / f"s{i}.h5", tmp_path / f"s{i}.json", pool_features=features)
        kept.append(read_extra(tmp_path / f"s{i}.h5", "pool_index").tolist())
    assert kept[0] == kept[1]
    # and they are what is read: features far from every real one fail the whole pool, so all is drawn anew
    summary = filter_pool(cfg, tmp / "pool.h5", x, y, real_features, tmp / "model.pt", "resnet18", snapshot,
                          tmp_path / "far.h5", tmp_path / "far.json", pool_features=cached + 1e3)
    assert (read_extra(tmp_path / "far.h5", "pool_index") >= len(pool)).all() and summary["drawn"] > 0
