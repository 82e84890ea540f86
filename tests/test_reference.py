"""The real-vs-real reference, the VAE bound and the convergence verdict (histosynth.evaluation.reference)."""

import json

import numpy as np
import pytest

from histosynth.evaluation.quality import quality_metrics
from histosynth.evaluation.draws import scoring_counts
from histosynth.evaluation.reference import draw_per_class, first_per_class, verdict, write_convergence, write_reference

QUALITY = {"k": 3, "kid_subsets": 10, "seed": 0}


def test_scoring_counts_follow_the_subsets_class_mix():
    labels = np.array([0] * 72 + [1] * 28)
    assert scoring_counts(labels, 2, 64) == {0: 92, 1: 36}  # 128 in all, 72 / 28
    assert scoring_counts(np.array([0] * 50 + [1] * 50), 2, 10) == {0: 10, 1: 10}
    assert scoring_counts(np.array([0] * 999 + [1]), 2, 10) == {0: 20, 1: 1}  # never 0 of a class


def test_draws_are_per_class_seeded_and_capped():
    labels = np.array([0] * 30 + [1] * 5 + [2] * 10)
    idx = draw_per_class(labels, {0: 10, 1: 8, 2: 3}, seed=1)
    assert np.bincount(labels[idx]).tolist() == [10, 5, 3]  # class 1 has only 5: all of them
    assert np.array_equal(idx, np.sort(idx)) and len(set(idx)) == len(idx)
    assert np.array_equal(idx, draw_per_class(labels, {0: 10, 1: 8, 2: 3}, seed=1))
    assert not np.array_equal(idx, draw_per_class(labels, {0: 10, 1: 8, 2: 3}, seed=2))
    pool = np.array([0] * 8 + [1] * 8)
    assert first_per_class(pool, {0: 3, 1: 2}).tolist() == [0, 1, 2, 8, 9]  # filter `none`'s rule


def test_verdict_rule():
    v = verdict(90.0, 0.5, 30.0, max_fid_ratio=5, min_recall=0.1)
    assert v["converged"] and v["fid_ratio"] == pytest.approx(3.0)
    assert not verdict(160.0, 0.5, 30.0, max_fid_ratio=5, min_recall=0.1)["converged"]  # 5.3x
    assert not verdict(60.0, 0.05, 30.0, max_fid_ratio=5, min_recall=0.1)["converged"]  # recall 5 %
    assert v["rule"] == "FID ≤ 5× the real-vs-real FID and recall ≥ 10 %"


def test_reference_and_convergence_files(tmp_path):
    rng = np.random.default_rng(0)
    real = rng.normal(size=(120, 6))
    valid = {"scoring": {"domain": rng.normal(size=(40, 6))}, "kept": {"domain": rng.normal(size=(60, 6))}}
    counts = {"scoring": {0: 20, 1: 20}, "kept": {0: 30, 1: 30}}
    ref = write_reference(tmp_path / "reference.json", real={"domain": real}, valid=valid, counts=counts, subset=0,
                          quality=QUALITY)
    saved = json.loads((tmp_path / "reference.json").read_text())
    assert saved["kept"]["counts"] == {"0": 30, "1": 30} and saved["subset"] == 0
    direct = quality_metrics(real, valid["kept"]["domain"], kid_subsets=10)
    assert saved["kept"]["domain"]["fid"] == pytest.approx(direct["fid"])
    assert saved["kept"]["domain"]["n_fake"] == 60 and ref["scoring"]["domain"]["n_fake"] == 40

    # Noise-like images (far from the real features) fail; draws of the real distribution pass.
    near = write_convergence(tmp_path / "near.json", real, rng.normal(size=(60, 6)), saved, generator="g", subset=0,
                             epoch=7, quality=QUALITY, max_fid_ratio=5, min_recall=0.1)
    far = write_convergence(tmp_path / "far.json", real, rng.normal(3.0, 0.1, size=(60, 6)), saved, generator="g",
                            subset=0, epoch=7, quality=QUALITY, max_fid_ratio=5, min_recall=0.1)
    assert near["converged"] and not far["converged"] and far["fid_ratio"] > 5 and far["recall"] < 0.1
    assert json.loads((tmp_path / "far.json").read_text())["epoch"] == 7
