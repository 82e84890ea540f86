"""Evaluation metrics, in NumPy/SciPy so they run anywhere and are easy to check."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count 1/2).

    Undefined (NaN) when only one class is present.
    """
    y_true = np.asarray(y_true).astype(bool)
    n_pos = int(y_true.sum())
    n_neg = len(y_true) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)  # average ranks handle ties exactly like the trapezoid rule
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(y_true, y_score) -> dict[str, float]:
    """Accuracy, AUC, sensitivity and specificity of a classifier's test predictions.

    Binary: `y_score` has shape (N,) with the probability of class 1; the decision
    threshold is 0.5 and class 1 is the positive class (PCam: metastatic tissue).
    Multi-class: `y_score` has shape (N, C) (class probabilities); the prediction is
    the argmax; AUC, sensitivity and specificity are macro-averaged one-vs-rest
    (classes absent from `y_true` are skipped for AUC and sensitivity).
    """
    y_true = np.asarray(y_true).astype(np.int64).ravel()
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_score.ndim == 1 or (y_score.ndim == 2 and y_score.shape[1] == 1):
        score = y_score.ravel()
        if score.shape[0] != y_true.shape[0]:
            raise ValueError(f"y_true has {len(y_true)} rows, y_score {len(score)}")
        if not np.isin(y_true, (0, 1)).all():
            raise ValueError("binary metrics need labels in {0, 1}; pass (N, C) scores for multi-class")
        pred = (score >= 0.5).astype(np.int64)
        pos, neg = y_true == 1, y_true == 0
        return {
            "accuracy": float((pred == y_true).mean()),
            "auc": roc_auc(pos, score),
            "sensitivity": float(pred[pos].mean()) if pos.any() else float("nan"),
            "specificity": float((1 - pred[neg]).mean()) if neg.any() else float("nan"),
        }
    if y_score.ndim != 2 or y_score.shape[0] != y_true.shape[0]:
        raise ValueError(f"y_score must be (N,) or (N, C) with N={len(y_true)}, got {y_score.shape}")
    n_classes = y_score.shape[1]
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes})")
    pred = y_score.argmax(axis=1)
    aucs, sens, spec = [], [], []
    for c in range(n_classes):
        is_c = y_true == c
        if is_c.any():
            sens.append((pred[is_c] == c).mean())
            if not is_c.all():
                aucs.append(roc_auc(is_c, y_score[:, c]))
        if (~is_c).any():
            spec.append((pred[~is_c] != c).mean())
    return {
        "accuracy": float((pred == y_true).mean()),
        "auc": float(np.mean(aucs)) if aucs else float("nan"),
        "sensitivity": float(np.mean(sens)),
        "specificity": float(np.mean(spec)),
    }


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2) (FID).

    ||mu1 - mu2||² + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^½), in float64.
    Tr((sigma1 sigma2)^½) is the sum of the square roots of the eigenvalues of
    sigma1 sigma2: they are real and >= 0 for covariance matrices, so round-off
    (tiny imaginary parts, tiny negatives) is dropped. This avoids scipy's sqrtm,
    which is 4-5x slower and whose `disp` argument is gone in SciPy >= 1.18.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2).real.clip(min=0)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(eigenvalues).sum())


def ema_smooth(values, alpha: float) -> np.ndarray:
    """Exponential moving average of a curve (HistoGAN eq. 5).

    d̂_1 = d_1;  d̂_t = alpha · d̂_{t-1} + (1 - alpha) · d_t.  alpha = 0 leaves the
    curve unchanged; larger alpha smooths more.
    """
    if not 0 <= alpha < 1:
        raise ValueError(f"EMA alpha must be in [0, 1), got {alpha}")
    values = np.asarray(values, dtype=np.float64)
    smoothed = np.empty_like(values)
    for t, d in enumerate(values):
        smoothed[t] = d if t == 0 else alpha * smoothed[t - 1] + (1 - alpha) * d
    return smoothed


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
