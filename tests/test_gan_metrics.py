"""FID, EMA and KID against independent references."""

import numpy as np
import torch
import pytest
from pytorch_fid.fid_score import calculate_frechet_distance

from histosynth.evaluation.metrics import FrechetReference, frechet_distance, kernel_inception_distance
from histosynth.evaluation.selection import ema_smooth


def gaussian_stats(rng, n, d, shift=0.0, scale=1.0):
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * scale + shift
    return x.mean(0), np.cov(x, rowvar=False)


@pytest.mark.parametrize("d", [2, 8, 64])  # pytorch-fid cannot take d=1
def test_frechet_distance_matches_pytorch_fid(d):
    rng = np.random.default_rng(d)
    mu1, s1 = gaussian_stats(rng, 500, d)
    mu2, s2 = gaussian_stats(rng, 500, d, shift=0.3, scale=1.2)
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref = calculate_frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-8)


def test_frechet_distance_of_identical_and_rank_deficient_gaussians():
    rng = np.random.default_rng(0)
    mu, s = gaussian_stats(rng, 20, 64)  # 20 samples in 64-D: singular covariance
    # Zero up to round-off relative to the size of the covariances.
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-7 * np.trace(s)
    mu2, s2 = gaussian_stats(rng, 20, 64, shift=1.0)
    ref = calculate_frechet_distance(mu, s, mu2, s2)
    assert frechet_distance(mu, s, mu2, s2) == pytest.approx(ref, rel=1e-4)
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(mu, s, mu2[:3], s2[:3, :3])


def test_ema_smooth_by_hand():
    d = [10.0, 20.0, 5.0, 5.0]
    # alpha 0.5: 10; 0.5*10+0.5*20=15; 0.5*15+0.5*5=10; 0.5*10+0.5*5=7.5
    np.testing.assert_allclose(ema_smooth(d, 0.5), [10, 15, 10, 7.5])
    np.testing.assert_allclose(ema_smooth(d, 0.0), d)
    # An outlier dip (epoch 3 of the raw curve) no longer wins after smoothing.
    curve = [50, 40, 12, 45, 30, 25, 22, 21]
    assert np.argmin(curve) == 2 and np.argmin(ema_smooth(curve, 0.5)) == 7
    with pytest.raises(ValueError, match="alpha"):
        ema_smooth(d, 1.0)


def kid_by_definition(x, y):
    """Direct double-loop transcription of the unbiased MMD² estimator."""
    m, d = len(x), x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_the_definition_and_is_unbiased():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)), rng.normal(0.5, 1, size=(12, 5))
    mean, std = kernel_inception_distance(x, y, n_subsets=1, subset_size=12)
    assert mean == pytest.approx(kid_by_definition(x, y)) and std == 0
    # Same distribution: the unbiased estimate averages to ~0 even with tiny sets.
    same = [kernel_inception_distance(rng.normal(size=(10, 4)), rng.normal(size=(10, 4)), n_subsets=1)[0]
            for _ in range(400)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))
    with pytest.raises(ValueError, match="same D"):
        kernel_inception_distance(x, y[:, :3])


def test_frechet_distance_one_dimensional_closed_form():
    # 1-D: (m1 - m2)² + s1 + s2 - 2 sqrt(s1 s2) = (m1 - m2)² + (sqrt(s1) - sqrt(s2))²
    assert frechet_distance(1.0, 4.0, 3.0, 9.0) == pytest.approx(4 + 1)


def features(rng, n, d, condition):
    """n correlated samples in d dimensions, the k-th direction scaled by 10^(-condition k / d)."""
    return (rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d)) * np.logspace(0, -condition, d)


def exact_frechet(x, y):
    """Independent of any matrix square root: Tr((sigma_x sigma_y)^½) is the nuclear norm of
    Xc Yc^T / (n - 1) for centred samples of equal count (exact for rank-deficient covariances)."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    nuclear = np.linalg.svd(xc @ yc.T / (len(x) - 1), compute_uv=False).sum()
    diff = x.mean(0) - y.mean(0)
    return diff @ diff + np.trace(np.cov(x, rowvar=False)) + np.trace(np.cov(y, rowvar=False)) - 2 * nuclear


# Well- and ill-conditioned (eigenvalues over 8 decades), full rank and rank-deficient (n < d).
@pytest.mark.parametrize("n, d, condition", [(1200, 512, 0), (1200, 512, 4), (200, 512, 0), (200, 512, 3),
                                             (300, 2048, 0), (300, 2048, 3)])
def test_frechet_reference_matches_pytorch_fid_and_the_exact_value(n, d, condition):
    rng = np.random.default_rng(n + d + condition)
    x = features(rng, n, d, condition)
    y = features(rng, n, d, condition) * 1.1 + 0.05
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    reference = FrechetReference(mu1, s1)
    ours = reference.distance(mu2, s2)
    assert ours == pytest.approx(exact_frechet(x, y), rel=1e-6)
    if d <= 512:  # pytorch-fid's sqrtm takes ~20 s at d = 2048 (bench/frechet_distance.py compares there)
        assert ours == pytest.approx(calculate_frechet_distance(mu1, s1, mu2, s2), rel=1e-6)
    assert reference.distance(mu1, s1) == pytest.approx(0, abs=1e-6 * np.trace(s1))
    assert frechet_distance(mu1, s1, mu2, s2) == ours  # the one-pair form is the same computation


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", [pytest.param(d, marks=pytest.mark.cuda) if d == "cuda" else d for d in DEVICES])
@pytest.mark.parametrize("n, d, condition", [(1200, 512, 4), (300, 2048, 3)])
def test_frechet_reference_in_torch_float64_on_the_device(device, n, d, condition):
    """The torch path (CUDA scoring; here also on the CPU) agrees with the exact value, rank-deficient too."""
    rng = np.random.default_rng(n + d)
    x = features(rng, n, d, condition)
    y = features(rng, n, d, condition) * 1.1 + 0.05
    reference = FrechetReference(x.mean(0), np.cov(x, rowvar=False), device)
    assert reference.sqrt_sigma.dtype == torch.float64 and reference.sqrt_sigma.device.type == device
    assert reference.distance(y.mean(0), np.cov(y, rowvar=False)) == pytest.approx(exact_frechet(x, y), rel=1e-6)
