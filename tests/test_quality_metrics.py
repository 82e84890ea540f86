"""Improved precision/recall and realism score against independent references.

precision_recall is checked against the prdc package (Naver's implementation),
realism_score against a direct full-matrix transcription of the formula with
scipy's cdist. prdc counts a sample inside a ball when distance < radius, ours
(like the authors' code) when distance <= radius: with continuous random
features exact ties have probability 0, so the results must be equal.
"""

import numpy as np
import pytest
from prdc import compute_prdc
from scipy.spatial.distance import cdist

from histosynth.errors import InputError
from histosynth.evaluation.metrics import density_coverage, f1_score, precision_recall, realism_score


def features(seed, n_real=200, n_fake=150, dim=16):
    """Real ~ N(0, I); fake shifted and wider, so precision and recall are not trivially 0 or 1."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_real, dim)), rng.normal(0.3, 1.2, size=(n_fake, dim))


def realism_reference(real, fake, k):
    """Eq. 11 with the full distance matrices, after pruning radii above the median."""
    radii = np.sort(cdist(real, real), axis=1)[:, k]  # column 0 is the sample itself
    kept = radii <= np.median(radii)
    return (radii[kept] / cdist(fake, real[kept])).max(axis=1)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_precision_recall_match_prdc(k, seed, capsys):
    real, fake = features(seed)
    ref = compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    precision, recall = precision_recall(real, fake, k)
    assert 0 < precision < 1 and 0 < recall <= 1  # a meaningful comparison, not 0 == 0
    assert precision == pytest.approx(ref["precision"], abs=1e-12)
    assert recall == pytest.approx(ref["recall"], abs=1e-12)


@pytest.mark.parametrize("k", [1, 5, 7])
@pytest.mark.parametrize("seed", [0, 1])
def test_density_coverage_match_prdc(k, seed):
    real, fake = features(seed)
    ref = compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    density, coverage = density_coverage(real, fake, k, block_size=64)  # several blocks
    assert 0 < density and 0 < coverage < 1  # a meaningful comparison
    assert density == pytest.approx(ref["density"], abs=1e-9)
    assert coverage == pytest.approx(ref["coverage"], abs=1e-9)


def test_density_and_coverage_see_what_they_should():
    """Fakes drawn like the reals: density ~1, coverage high; fakes stacked on one real sample:
    coverage of one ball's worth; one far-off outlier fake does not change them."""
    rng = np.random.default_rng(3)
    real = rng.normal(size=(400, 8))
    density, coverage = density_coverage(real, rng.normal(size=(400, 8)))
    assert 0.8 < density < 1.2 and coverage > 0.9
    collapsed = real[:1] + rng.normal(scale=1e-3, size=(400, 8))
    assert density_coverage(real, collapsed)[1] < 0.05
    fake = rng.normal(size=(399, 8))
    with_outlier = np.vstack([fake, np.full((1, 8), 50.0)])
    assert density_coverage(real, with_outlier)[1] == density_coverage(real, fake)[1]


@pytest.mark.parametrize("k, n_real", [(1, 101), (3, 100), (5, 57)])  # odd and even N
def test_realism_matches_full_matrix_reference(k, n_real):
    real, fake = features(k, n_real=n_real, n_fake=40, dim=8)
    scores = realism_score(real, fake, k)
    assert scores.dtype == np.float64 and scores.shape == (40,)
    np.testing.assert_allclose(scores, realism_reference(real, fake, k), rtol=1e-9)
    assert (scores >= 1).any() and (scores < 1).any()


def test_realism_ignores_balls_of_sparse_real_samples():
    # A tight cluster plus one isolated real sample: its 1-NN ball is huge (radius
    # above the median), so a fake next to it is not realistic once pruned.
    rng = np.random.default_rng(0)
    real = np.vstack([rng.normal(scale=0.1, size=(20, 2)), [[10.0, 0.0]]])
    fake = np.array([[9.0, 0.0]])
    assert realism_score(real, fake, k=1)[0] < 0.2
    unpruned = np.max(np.sort(cdist(real, real), axis=1)[:, 1] / cdist(fake, real))
    assert unpruned > 5  # what the score would be without the median pruning


def test_realism_of_fake_equal_to_real_sample_is_huge():
    real, _ = features(0, n_real=51, dim=8)
    radii = np.sort(cdist(real, real), axis=1)[:, 3]
    densest = real[np.argmin(radii)]  # certainly kept by the median pruning
    assert realism_score(real, densest[None], k=3)[0] > 1e6  # inf, or huge after round-off


@pytest.mark.parametrize("block_size", [1, 7, 64])
def test_batched_equals_unbatched(block_size):
    real, fake = features(3, n_real=123, n_fake=45, dim=12)
    assert precision_recall(real, fake, 3, block_size=block_size) == precision_recall(
        real, fake, 3, block_size=10_000)
    np.testing.assert_allclose(realism_score(real, fake, 3, block_size=block_size),
                               realism_score(real, fake, 3, block_size=10_000), rtol=1e-12)


def test_same_distribution_scores_high_far_distribution_scores_zero():
    rng = np.random.default_rng(0)
    real, same = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    far = rng.normal(size=(300, 8)) + 10
    precision, recall = precision_recall(real, same, k=5)
    assert precision > 0.85 and recall > 0.85
    assert precision_recall(real, far, k=5) == (0.0, 0.0)
    assert np.median(realism_score(real, same, k=5)) > 1
    assert realism_score(real, far, k=5).max() < 0.2


def test_accepts_float32_and_lists():
    real, fake = features(0, n_real=30, n_fake=20, dim=4)
    real32, fake32 = real.astype(np.float32), fake.astype(np.float32)
    # Computed in float64 whatever the input dtype.
    assert precision_recall(real32, fake32) == precision_recall(real32.astype(np.float64),
                                                                fake32.astype(np.float64))
    assert realism_score(real32, fake32).dtype == np.float64
    assert precision_recall(real.tolist(), fake.tolist()) == precision_recall(real, fake)


def test_input_errors():
    real, fake = features(0, n_real=10, n_fake=10, dim=4)
    with pytest.raises(InputError, match=r"\(10, 4\) and \(10, 5\)"):
        precision_recall(real, np.zeros((10, 5)))
    with pytest.raises(InputError, match=r"\(10, 4\) and \(10, 5\)"):
        realism_score(real, np.zeros((10, 5)))
    with pytest.raises(InputError, match="shapes"):
        precision_recall(real[0], fake)  # 1-D
    with pytest.raises(InputError, match="shapes"):
        realism_score(real, fake[0])
    with pytest.raises(InputError, match="real_features needs at least 4 samples"):
        realism_score(real[:3], fake, k=3)
    with pytest.raises(InputError, match="fake_features needs at least 4 samples"):
        precision_recall(real, fake[:3], k=3)
    assert realism_score(real, fake[:1], k=3).shape == (1,)  # one fake is enough to score
    bad = real.copy()
    bad[2, 1] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        precision_recall(bad, fake)
    for k in (0, 2.5, True):
        with pytest.raises(InputError, match="k"):
            precision_recall(real, fake, k)
    with pytest.raises(InputError, match="block_size"):
        realism_score(real, fake, block_size=0)
    assert issubclass(InputError, ValueError)


def test_f1_score():
    assert f1_score(0.5, 0.5) == 0.5
    assert f1_score(0.8, 0.4) == pytest.approx(2 * 0.32 / 1.2)
    assert f1_score(1.0, 0.0) == 0.0
    assert f1_score(0.0, 0.0) == 0.0
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(InputError):
            f1_score(bad, 0.5)
