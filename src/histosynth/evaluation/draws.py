"""How many images per class each stage draws: a module of its own, so that generation and
filtering (which size their sets with it) do not count the measuring code in their code
provenance (histosynth.provenance), and editing a metric reruns no generator."""

from __future__ import annotations

import numpy as np


def target_counts(real_labels: np.ndarray, n_classes: int, ratio: float) -> dict[int, int]:
    """r·N_i per class, N_i = real training images of class i."""
    counts = np.bincount(real_labels, minlength=n_classes)
    return {c: int(round(ratio * n)) for c, n in enumerate(counts)}


def scoring_counts(labels: np.ndarray, n_classes: int, per_class: int) -> dict[int, int]:
    """Images per class for checkpoint scoring: per_class x n_classes in the subset's class proportions.

    FID is taken against the whole real subset, so a synthetic set with another class mix
    (e.g. balanced against a 72 / 28 subset) is penalised for the mix alone: on the demo a
    balanced draw of *real* validation images scored twice the FID of a proportional one.
    """
    counts = np.bincount(labels, minlength=n_classes)
    total = per_class * n_classes
    return {c: max(1, int(round(total * n / counts.sum()))) for c, n in enumerate(counts)}
