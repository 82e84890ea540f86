"""Metrics of synthetic images against real ones (FID, KID, precision/recall, density/coverage,
realism), in NumPy/SciPy so they run anywhere and are easy to check. Classifier metrics live in
histosynth.classification.metrics: a classifier's code provenance does not count this module."""

from __future__ import annotations

import numpy as np

from histosynth.errors import InputError


class FrechetReference:
    """The real side of the Fréchet distance, factorised once, for scoring many snapshots against it.

    Tr((sigma1 sigma2)^½) = Tr((S sigma2 S)^½) with S = sigma1^½ (sigma1 sigma2 and S sigma2 S
    have the same eigenvalues), and S sigma2 S is symmetric: each distance then costs two
    matrix products and one symmetric eigenvalue solve, where scipy's sqrtm (pytorch-fid) does a
    general Schur decomposition of sigma1 sigma2 every time. S comes from one symmetric
    eigen-decomposition of sigma1, its round-off negatives clipped to 0, so rank-deficient
    covariances (fewer samples than dimensions) are exact too. Everything in float64.
    """

    def __init__(self, mu, sigma, device: str | None = None):
        """`device`: None computes with NumPy on the CPU; a torch device ("cuda", or "cpu" for
        the same code on the CPU) keeps S and every solve there, in float64."""
        self.mu = np.atleast_1d(np.asarray(mu, np.float64))
        sigma = np.atleast_2d(np.asarray(sigma, np.float64))
        if sigma.shape != (len(self.mu), len(self.mu)):
            raise ValueError(f"shape mismatch: mu {self.mu.shape}, sigma {sigma.shape}")
        self.trace, self.device = float(np.trace(sigma)), device
        if device is None:
            w, v = np.linalg.eigh(sigma)
            self.sqrt_sigma = (v * np.sqrt(w.clip(min=0))) @ v.T
        else:
            import torch

            w, v = torch.linalg.eigh(torch.as_tensor(sigma, device=device))
            self.sqrt_sigma = (v * w.clamp(min=0).sqrt()) @ v.T

    def distance(self, mu, sigma) -> float:
        """||mu1 - mu||² + Tr(sigma1) + Tr(sigma) - 2 Tr((sigma1 sigma)^½)."""
        mu = np.atleast_1d(np.asarray(mu, np.float64))
        sigma = np.atleast_2d(np.asarray(sigma, np.float64))
        if mu.shape != self.mu.shape or sigma.shape != tuple(self.sqrt_sigma.shape):
            raise ValueError(f"shape mismatch: mu {self.mu.shape} vs {mu.shape}, "
                             f"sigma {tuple(self.sqrt_sigma.shape)} vs {sigma.shape}")
        if self.device is None:
            root_trace = np.sqrt(np.linalg.eigvalsh(self.sqrt_sigma @ sigma @ self.sqrt_sigma).clip(min=0)).sum()
        else:
            import torch

            s = torch.as_tensor(sigma, device=self.device)
            root_trace = torch.linalg.eigvalsh(self.sqrt_sigma @ s @ self.sqrt_sigma).clamp(min=0).sqrt().sum().item()
        diff = self.mu - mu
        return float(diff @ diff + self.trace + np.trace(sigma) - 2 * root_trace)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2) (FID), in float64.

    One pair: FrechetReference(mu1, sigma1).distance(mu2, sigma2). Scoring many snapshots
    against one real set keeps the FrechetReference and pays only the second half each time.
    """
    return FrechetReference(mu1, sigma1).distance(mu2, sigma2)


def kernel_inception_distance(real_features, fake_features, *, n_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): unbiased MMD² with kernel k(x, y) = (x·y / d + 1)³.

    Averaged over `n_subsets` random subsets of min(subset_size, n_real, n_fake)
    samples of each set; returns (mean, std). Unbiased, so unlike FID it does not
    depend on the sample size: use it for small sets (demo, 3-10% subsets).
    """
    real = np.asarray(real_features, np.float64)
    fake = np.asarray(fake_features, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature arrays must be (N, D) with the same D, got {real.shape} and {fake.shape}")
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(real)} real and {len(fake)} fake")
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    estimates = np.empty(n_subsets)
    for i in range(n_subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        k_xx, k_yy, k_xy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        # Unbiased: within-set sums leave out the diagonal k(x_i, x_i).
        estimates[i] = ((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
                        + (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
                        - 2 * k_xy.mean())
    return float(estimates.mean()), float(estimates.std())


# Improved precision/recall and realism score (Kynkäänniemi et al. 2019, "Improved
# precision and recall metric for assessing generative models"). Each sample set
# approximates its manifold by the union of balls around its samples, with radius
# the distance to the sample's k-th nearest neighbour in the same set.

KNN_BLOCK_SIZE = 1024
"""Rows per distance block: 1024 x 50,000 float64 distances are ~400 MB."""


def _check_knn_inputs(real_features, fake_features, k: int, min_fake: int,
                      block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Both sets as float64 (N, D) arrays; InputError naming the problem otherwise.

    The real set needs k + 1 samples (a sample and its k neighbours), the fake set
    `min_fake`. Non-finite features would silently turn every distance into NaN.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k (nearest neighbours) must be a positive integer, got {k!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise InputError(f"block_size must be a positive integer, got {block_size!r}")
    real = np.asarray(real_features, dtype=np.float64)
    fake = np.asarray(fake_features, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1] or real.shape[1] == 0:
        raise InputError("real_features and fake_features must be (N, D) arrays with the same "
                         f"D >= 1, got shapes {real.shape} and {fake.shape}")
    for name, x, needed in (("real_features", real, k + 1), ("fake_features", fake, min_fake)):
        if len(x) < needed:
            raise InputError(f"{name} needs at least {needed} samples for k={k}, got {len(x)}")
        if not np.isfinite(x).all():
            raise InputError(f"{name} contains NaN or infinite values")
    return real, fake


def _distance_blocks(a: np.ndarray, b: np.ndarray, block_size: int):
    """Yield (start, Euclidean distances from a[start:start + block_size] to all of b).

    Only one block_size x len(b) block exists at a time: a full 50,000 x 50,000
    matrix would take 20 GB. ||x - y||² = ||x||² + ||y||² - 2 x·y turns each block
    into one matrix product; round-off can make it slightly negative, so it is
    clamped at 0 before the square root.
    """
    b_sq = np.einsum("ij,ij->i", b, b)
    for start in range(0, len(a), block_size):
        rows = a[start:start + block_size]
        d = rows @ b.T
        d *= -2.0
        d += np.einsum("ij,ij->i", rows, rows)[:, None]
        d += b_sq
        np.maximum(d, 0.0, out=d)
        np.sqrt(d, out=d)
        yield start, d


def _knn_radii(x: np.ndarray, k: int, block_size: int) -> np.ndarray:
    """Distance from each sample of x to its k-th nearest neighbour in x, itself excluded.

    The self-distance is set to exactly 0 so it is always the 0th neighbour and
    position k of the partitioned row is the k-th other sample.
    """
    radii = np.empty(len(x))
    for start, d in _distance_blocks(x, x, block_size):
        rows = np.arange(len(d))
        d[rows, start + rows] = 0.0
        d.partition(k, axis=1)
        radii[start:start + len(d)] = d[:, k]
    return radii


def realism_score(real_features, fake_features, k: int = 3, *,
                  block_size: int = KNN_BLOCK_SIZE) -> np.ndarray:
    """Realism score of each fake sample (Kynkäänniemi et al. 2019, eq. 11 of the PCam paper).

    R(fake) = max_i radius_i / ||real_i - fake||, radius_i being the distance from
    real_i to its k-th nearest real neighbour. R >= 1 means the fake lies inside at
    least one real ball. Real samples whose radius is above the median are left
    out first, as in the authors' code: balls of isolated (outlier) real samples
    are large and would call far-away fakes realistic.

    Plain (not squared) distances, as in the paper's formula; the authors' code
    divides squared distances, which gives the square of this score (same R >= 1
    threshold and ranking). A fake equal to a kept real sample scores inf (or a
    huge number when round-off leaves a tiny distance); zero-radius balls
    (k duplicates) contribute 0. Returns one float64 score per fake sample.
    """
    real, fake = _check_knn_inputs(real_features, fake_features, k, 1, block_size)
    radii = _knn_radii(real, k, block_size)
    keep = radii <= np.median(radii)
    real, radii = real[keep], radii[keep]
    scores = np.empty(len(fake))
    for start, d in _distance_blocks(fake, real, block_size):
        with np.errstate(divide="ignore", invalid="ignore"):
            np.divide(radii, d, out=d)  # radius / 0 = inf; 0 / 0 = NaN, set to 0 below
        d[np.isnan(d)] = 0.0
        scores[start:start + len(d)] = d.max(axis=1)
    return scores


def precision_recall(real_features, fake_features, k: int = 3, *,
                     block_size: int = KNN_BLOCK_SIZE) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019), as (precision, recall).

    Precision (fidelity): fraction of fake samples inside at least one real ball.
    Recall (diversity): fraction of real samples inside at least one fake ball.
    Balls are k-th-nearest-neighbour balls within their own set, boundary
    included (distance <= radius, as in the authors' code; the prdc package uses
    <, which differs only on exact ties). No median pruning here: the authors
    apply it to the realism score only.
    """
    real, fake = _check_knn_inputs(real_features, fake_features, k, k + 1, block_size)
    real_radii = _knn_radii(real, k, block_size)
    fake_radii = _knn_radii(fake, k, block_size)
    fake_in_real = np.zeros(len(fake), dtype=bool)
    real_in_fake = np.empty(len(real), dtype=bool)
    # One pass over real-vs-fake distances serves both directions.
    for start, d in _distance_blocks(real, fake, block_size):
        stop = start + len(d)
        fake_in_real |= (d <= real_radii[start:stop, None]).any(axis=0)
        real_in_fake[start:stop] = (d <= fake_radii).any(axis=1)
    return float(fake_in_real.mean()), float(real_in_fake.mean())


DC_K = 5  # Naeem et al. 2020's k for density and coverage (their §4: k = 5 with 10k samples)


def density_coverage(real_features, fake_features, k: int = DC_K, *,
                     block_size: int = KNN_BLOCK_SIZE) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020, "Reliable fidelity and diversity metrics"), as (density, coverage).

    Only real k-th-nearest-neighbour balls are used, so an outlier fake cannot inflate them
    as it inflates precision/recall's fake balls:
      density  = (1 / kM) sum_j #{i : fake_j in B(real_i)}  (1 on average for fakes drawn like the reals)
      coverage = fraction of real samples whose ball holds at least one fake.
    Strict inequality (distance < radius), as the authors' prdc package.
    """
    real, fake = _check_knn_inputs(real_features, fake_features, k, 1, block_size)
    radii = _knn_radii(real, k, block_size)
    inside, covered = 0, np.empty(len(real), dtype=bool)
    for start, d in _distance_blocks(real, fake, block_size):
        ball = d < radii[start:start + len(d), None]
        inside += int(ball.sum())
        covered[start:start + len(d)] = ball.any(axis=1)
    return inside / (k * len(fake)), float(covered.mean())


def f1_score(precision: float, recall: float) -> float:
    """Harmonic mean of precision and recall (the PCam paper's "improved F1", eq. 12).

    0 when both are 0 (the limit, instead of 0/0).
    """
    for name, value in (("precision", precision), ("recall", recall)):
        if not 0.0 <= value <= 1.0:  # also rejects NaN
            raise InputError(f"{name} must lie in [0, 1], got {value!r}")
    total = precision + recall
    return 0.0 if total == 0 else float(2.0 * precision * recall / total)
