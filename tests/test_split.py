"""K non-overlapping, class-balanced subsets."""

import numpy as np
import pytest

from histosynth.data.split import balanced_subsets, read_subset, write_subsets
from histosynth.data.store import write_store
from histosynth.errors import InputError


def test_pcam_protocol_subsets_are_disjoint_and_balanced():
    rng = np.random.default_rng(0)
    labels = (rng.random(26_000) < 0.5).astype(int)  # PCam is ~50/50
    subsets = balanced_subsets(labels, k=5, fraction=0.1, seed=0)
    assert len(subsets) == 5
    union = np.concatenate(subsets)
    assert len(np.unique(union)) == len(union), "subsets overlap"
    for c in (0, 1):
        n_c = (labels == c).sum()
        for idx in subsets:
            assert (labels[idx] == c).sum() == round(0.1 * n_c)
    for idx in subsets:
        assert np.all(np.diff(idx) > 0)  # sorted, unique


def test_seed_changes_draw_and_is_reproducible():
    labels = np.repeat([0, 1, 2], 100)
    a = balanced_subsets(labels, 3, 0.2, seed=1)
    b = balanced_subsets(labels, 3, 0.2, seed=1)
    c = balanced_subsets(labels, 3, 0.2, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_rounding_never_breaks_disjointness():
    labels = np.array([0] * 939 + [1] * 101)
    a, b = balanced_subsets(labels, 2, 0.5, seed=0)
    assert not set(a) & set(b)
    assert (labels[a] == 0).sum() == 469 and (labels[a] == 1).sum() == 50


def test_imbalanced_classes_keep_their_ratio():
    labels = np.array([0] * 900 + [1] * 100)
    (idx,) = balanced_subsets(labels, 1, 0.1, seed=0)
    assert (labels[idx] == 0).sum() == 90 and (labels[idx] == 1).sum() == 10


@pytest.mark.parametrize("k,fraction,match", [(11, 0.1, "cannot be disjoint"), (2, 0.001, "would hold none"),
                                               (0, 0.1, "k must be"), (1, 1.5, "fraction must be")])
def test_impossible_requests_raise(k, fraction, match):
    with pytest.raises(InputError, match=match):
        balanced_subsets(np.repeat([0, 1], 50), k, fraction, seed=0)


def test_write_and_read_subsets(tmp_path):
    labels = np.repeat([0, 1], 20)
    images = np.zeros((40, 8, 8, 3), np.uint8)
    write_store(tmp_path / "train.h5", images, labels, ["a", "b"])
    paths = [tmp_path / f"subset{i}.npy" for i in range(2)]
    write_subsets(tmp_path / "train.h5", paths, tmp_path / "counts.tsv", fraction=0.25, seed=0)
    got = [read_subset(p) for p in paths]
    assert [len(g) for g in got] == [10, 10] and not set(got[0]) & set(got[1])
    lines = (tmp_path / "counts.tsv").read_text().splitlines()
    assert lines[0] == "subset\tclass\tcount" and "0\ta\t5" in lines
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(InputError, match="bad.npy"):
        read_subset(tmp_path / "bad.npy")
