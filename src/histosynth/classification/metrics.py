"""Classifier metrics (accuracy, AUC, sensitivity, specificity), in NumPy/SciPy."""

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
