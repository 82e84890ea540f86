"""K non-overlapping, class-balanced training subsets (the PCam 5 x 10% protocol).

Each subset holds round(fraction * n_c) images of every class c, so it keeps the
class balance of the full training split, and no image is in two subsets.
"""

from __future__ import annotations

import numpy as np

from histosynth.data.store import read_labels, store_info
from histosynth.errors import InputError
from histosynth.fileio import atomic_path, write_text


def balanced_subsets(labels: np.ndarray, k: int, fraction: float, seed: int,
                     class_names=None) -> list[np.ndarray]:
    """Return k disjoint sorted index arrays, each with round(fraction * n_c) of class c."""
    labels = np.asarray(labels)
    if k < 1:
        raise InputError(f"subsets.k must be >= 1, got {k}")
    if not 0 < fraction <= 1:
        raise InputError(f"subsets.fraction must be in (0, 1], got {fraction}")
    if k * fraction > 1 + 1e-9:
        raise InputError(f"subsets.k={k} x subsets.fraction={fraction:g} > 1: subsets cannot be disjoint")
    rng = np.random.default_rng(seed)
    subsets = [[] for _ in range(k)]
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        # Rounding may ask for one image more than k disjoint draws allow
        # (k=2, f=0.5, 939 images -> 470); cap at an equal share.
        per_subset = min(int(round(fraction * len(members))), len(members) // k)
        if per_subset == 0:
            name = class_names[c] if class_names is not None else c
            raise InputError(
                f"class {name!r} has {len(members)} training images: a {fraction:g} subset would hold none of it"
            )
        members = rng.permutation(members)
        for i in range(k):
            subsets[i].append(members[i * per_subset : (i + 1) * per_subset])
    return [np.sort(np.concatenate(parts)) for parts in subsets]


def write_subsets(train_store, out_paths: list, counts_path, *, fraction: float, seed: int) -> None:
    """Write one `.npy` of training-row indices per output path, and a counts table."""
    info = store_info(train_store)
    labels = read_labels(train_store)
    subsets = balanced_subsets(labels, len(out_paths), fraction, seed, info.class_names)
    rows = ["subset\tclass\tcount"]
    for i, (idx, path) in enumerate(zip(subsets, out_paths)):
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, idx.astype(np.int64))
        for c, name in enumerate(info.class_names):
            rows.append(f"{i}\t{name}\t{int((labels[idx] == c).sum())}")
    write_text(counts_path, "\n".join(rows) + "\n")
    print("\n".join(rows))


def read_subset(path) -> np.ndarray:
    try:
        idx = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable subset index file ({e}); rerun the `split` stage") from e
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise InputError(f"{path}: expected a 1-D integer index array, got {idx.dtype} {idx.shape}")
    return idx
