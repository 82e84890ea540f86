"""Memorisation audit: which synthetic images are near-copies of training images?

For every synthetic image, its nearest image of the real training subset in two spaces,
with the distance:

  * ``domain``: the domain feature space every quality number is measured in (the subset's
    classifier, features scaled to root-mean-square 1: histosynth.evaluation.features);
  * ``pixel``: the image area-downsampled to PIXEL_SIZE x PIXEL_SIZE, RGB, each image
    standardised to mean 0 and standard deviation 1 over its values, so a copy with its
    brightness or contrast changed is still a copy; the distance is the smallest over the
    image's 8 flips and 90-degree turns (tissue has no orientation: neither has a copy).

The rule. A generator copies when its images lie closer to the training images than unseen
real images do (the held-out comparison of Meehan, Chaudhuri & Dasgupta 2020, "A
non-parametric test to detect data-copying in generative models", AISTATS). Per space, the
threshold is the COPY_PERCENTILE-th percentile of the real *validation* images' distances
to their nearest training image (rule reference_quality); a synthetic image is flagged a
likely copy when it is nearer than that in both spaces: near in what the classifier sees
and in the pixels. (In either space alone, 1 % of unseen real images are that near by
construction, and on the demo the domain space alone flagged strokes that look nothing like
their "source".) The rule's rate on unseen real images is what the reference row of the
quality table shows, and what any generator's copy rate is to be read against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from histosynth.errors import InputError
from histosynth.evaluation.metrics import KNN_BLOCK_SIZE, _distance_blocks

PIXEL_SIZE = 16
COPY_PERCENTILE = 1.0
SPACES = ("domain", "pixel")
RULE = (f"nearer to a training image than {COPY_PERCENTILE:g} % of real validation images are, both in domain "
        f"features and in pixels ({PIXEL_SIZE} px, standardised per image, any flip or 90-degree turn)")


def pixel_space(images: np.ndarray, size: int = PIXEL_SIZE) -> np.ndarray:
    """uint8 NHWC images -> (N, size * size * 3) float64 vectors: area-downsampled, standardised per image."""
    import torch
    import torch.nn.functional as F

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InputError(f"pixel_space needs uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(torch.float64)
    x = F.adaptive_avg_pool2d(x, size).flatten(1).numpy()
    x -= x.mean(axis=1, keepdims=True)
    x /= x.std(axis=1, keepdims=True) + 1e-6  # a flat image stays 0, not NaN
    return x


def dihedral_pixel_spaces(images: np.ndarray, size: int = PIXEL_SIZE):
    """pixel_space of the images under each of the 8 flips and 90-degree turns, one at a time (a
    generator: the 8 at once would hold 8x the pixel vectors of a pool of 50 000 images)."""
    images = np.asarray(images)
    for flipped in (images, images[:, :, ::-1]):
        for k in range(4):
            yield pixel_space(np.ascontiguousarray(np.rot90(flipped, k, axes=(1, 2))), size)


def nearest(query: np.ndarray, reference: np.ndarray, *, block_size: int = KNN_BLOCK_SIZE
            ) -> tuple[np.ndarray, np.ndarray]:
    """(index, Euclidean distance) of each query row's nearest reference row."""
    query, reference = np.asarray(query, np.float64), np.asarray(reference, np.float64)
    if query.ndim != 2 or reference.ndim != 2 or query.shape[1] != reference.shape[1] or not len(reference):
        raise InputError(f"nearest neighbours need (N, D) arrays of the same D, got {query.shape} and {reference.shape}")
    index, distance = np.empty(len(query), np.int64), np.empty(len(query))
    for start, d in _distance_blocks(query, reference, block_size):
        stop = start + len(d)
        index[start:stop] = d.argmin(axis=1)
        distance[start:stop] = d[np.arange(len(d)), index[start:stop]]
    return index, distance


def _nearest_in(space: str, query, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest training image in one space; a `pixel` query is the uint8 images, whose 8 flips and
    turns are each searched (the nearest counts)."""
    if space != "pixel":
        return nearest(query, train)
    index, distance = None, None
    for vectors in dihedral_pixel_spaces(query):
        i, d = nearest(vectors, train)
        if index is None:
            index, distance = i, d
        else:
            nearer = d < distance
            index[nearer], distance[nearer] = i[nearer], d[nearer]
    return index, distance


def copy_thresholds(valid: Mapping[str, object], train: Mapping[str, np.ndarray],
                    percentile: float = COPY_PERCENTILE) -> dict[str, float]:
    """{space: the `percentile`-th percentile of the validation images' nearest-training distances}.
    `valid`: image_spaces(its images, its domain features), as for audit."""
    return {space: float(np.percentile(_nearest_in(space, valid[space], train[space])[1], percentile))
            for space in SPACES}


def audit(synthetic: Mapping[str, object], train: Mapping[str, np.ndarray],
          thresholds: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Per synthetic image: `<space>_index` / `<space>_distance` of its nearest training image in each
    space, and `copy`, True when both distances are below their space's threshold. `synthetic`:
    image_spaces(images, domain features); `train`: training_spaces."""
    out, copy = {}, None
    for space in SPACES:
        index, distance = _nearest_in(space, synthetic[space], train[space])
        out[f"{space}_index"], out[f"{space}_distance"] = index, distance
        below = distance < thresholds[space]
        copy = below if copy is None else copy & below
    out["copy"] = copy
    return out


def summary(result: Mapping[str, np.ndarray], labels: np.ndarray, class_names: Sequence[str],
            thresholds: Mapping[str, float], n_closest: int = 8) -> dict:
    """The copy rate overall and per class, the thresholds, and the `n_closest` synthetic-training pairs:
    the synthetic images nearest a training image in units of the space's threshold (< 1: flagged)."""
    labels, copy = np.asarray(labels), result["copy"]
    relative = {s: result[f"{s}_distance"] / max(thresholds[s], 1e-12) for s in SPACES}
    nearness = np.maximum(relative["domain"], relative["pixel"])  # < 1: flagged (both spaces below)
    closest = []
    for i in np.argsort(nearness, kind="stable")[:n_closest]:
        closest.append({"synthetic": int(i), "class": str(class_names[labels[i]]),
                        "train": int(result["pixel_index"][i]), "train_domain": int(result["domain_index"][i]),
                        **{f"relative_{s}": float(relative[s][i]) for s in SPACES}, "copy": bool(copy[i])})
    return {"rule": RULE, "percentile": COPY_PERCENTILE, "pixel_size": PIXEL_SIZE,
            "thresholds": {s: float(thresholds[s]) for s in SPACES},
            "n": int(len(copy)), "n_copies": int(copy.sum()), "copy_rate": float(copy.mean()) if len(copy) else 0.0,
            "per_class": {str(name): float(copy[labels == c].mean()) if (labels == c).any() else 0.0
                          for c, name in enumerate(class_names)},
            "closest": closest}


def read_thresholds(reference_path) -> dict[str, float]:
    """The copy thresholds of a reference.json (rule reference_quality); a clear error if it has none."""
    import json

    try:
        with open(reference_path) as f:
            thresholds = json.load(f)["memorisation"]["thresholds"]
        return {space: float(thresholds[space]) for space in SPACES}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{reference_path}: no memorisation thresholds ({e!r}); rerun reference_quality") from e


def training_spaces(train_images: np.ndarray, train_features: np.ndarray) -> dict[str, np.ndarray]:
    """The training subset in both spaces (its domain features are the stored real statistics')."""
    return {"domain": np.asarray(train_features), "pixel": pixel_space(train_images)}


def image_spaces(images: np.ndarray, domain_features: np.ndarray) -> dict[str, np.ndarray]:
    """A set to audit (or the validation images to calibrate on): its domain features, and its uint8
    images, which the pixel search turns and flips one transform at a time."""
    return {"domain": np.asarray(domain_features), "pixel": np.asarray(images)}


def measure(images: np.ndarray, domain_features: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
            train: Mapping[str, np.ndarray], thresholds: Mapping[str, float], tsv_path=None) -> tuple[dict, dict]:
    """Audit a synthetic set (its images and their domain features): (summary, per-image result); with
    `tsv_path`, one row per image (index, class, nearest training index and distance per space, copy)."""
    import pandas as pd

    from histosynth.fileio import write_text

    result = audit(image_spaces(images, domain_features), train, thresholds)
    if tsv_path is not None:
        table = pd.DataFrame({"image": np.arange(len(images)), "class": [class_names[c] for c in labels],
                              **result})
        write_text(tsv_path, table.to_csv(sep="\t", index=False, float_format="%.6g"))
    return summary(result, labels, class_names, thresholds), result


def plot_closest_pairs(synthetic: np.ndarray, train: np.ndarray, closest: Sequence[Mapping], path, title: str = "") -> None:
    """The synthetic images nearest a training image, each above that training image (the nearest in
    pixels): what a reviewer asks to see before believing a set holds no copies of patient patches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from histosynth.fileio import atomic_path

    n = max(len(closest), 1)
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n + 0.6, 3.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for j, pair in enumerate(closest):
        axes[0, j].imshow(synthetic[pair["synthetic"]])
        axes[1, j].imshow(train[pair["train"]])
        axes[0, j].set_title(f"features {pair['relative_domain']:.2f}×\npixels {pair['relative_pixel']:.2f}×"
                             + ("\nlikely copy" if pair["copy"] else ""), fontsize=7,
                             color="C3" if pair["copy"] else "black")
    axes[0, 0].text(-0.1, 0.5, "synthetic", transform=axes[0, 0].transAxes, rotation=90, ha="right", va="center")
    axes[1, 0].text(-0.1, 0.5, "nearest training", transform=axes[1, 0].transAxes, rotation=90, ha="right",
                    va="center")
    fig.suptitle((title + "\n" if title else "") + "distance / copy threshold (both < 1: likely copy)", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
