"""The canonical HDF5 image store every stage after `prepare` reads.

One file per split:
  images  uint8 (N, H, W, 3), chunked along N
  labels  int64 (N,)
  attrs   class_names (JSON list), provenance (JSON object), format_version
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import h5py
import numpy as np

from histosynth.errors import InputError
from histosynth.fileio import atomic_path

FORMAT_VERSION = 1
# Rows per window when gathering an index set: large enough to amortise
# the call overhead, small enough to bound the extra memory of a block.
READ_BLOCK = 8192


@dataclass
class StoreInfo:
    path: str
    n: int
    image_shape: tuple[int, int, int]
    class_names: list[str]
    provenance: dict
    extras: tuple[str, ...] = ()  # the per-image arrays beside images and labels (write_store's `extra`)


def write_store(path, images: np.ndarray, labels: np.ndarray, class_names, provenance=None,
                extra: dict | None = None) -> None:
    """Write a split atomically (temp file, then rename); `extra` adds per-image arrays (e.g. seeds)."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(
            f"{path}: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}"
        )
    if labels.shape != (images.shape[0],):
        raise InputError(f"{path}: {images.shape[0]} images but labels of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise InputError(f"{path}: labels outside [0, {len(class_names)}) for classes {class_names}")
    chunk = (max(1, min(len(images), 256)),) + images.shape[1:]
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("images", data=images, chunks=chunk)
            f.create_dataset("labels", data=labels.astype(np.int64))
            for key, values in (extra or {}).items():
                if len(values) != len(images):
                    raise InputError(f"{path}: extra dataset '{key}' has {len(values)} rows, not {len(images)}")
                f.create_dataset(key, data=np.asarray(values))
            f.attrs["class_names"] = json.dumps(list(class_names))
            f.attrs["provenance"] = json.dumps(provenance or {}, sort_keys=True)
            f.attrs["format_version"] = FORMAT_VERSION


def _open(path) -> h5py.File:
    if not os.path.exists(path):
        raise InputError(f"{path}: image store not found (run the `prepare` stage first)")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path}: not a readable HDF5 file ({e}); delete it and rerun `prepare`") from e


def _check(f: h5py.File, path) -> None:
    for key in ("images", "labels"):
        if key not in f:
            raise InputError(f"{path}: missing dataset '{key}' (expected keys 'images', 'labels')")
    x, y = f["images"], f["labels"]
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
        raise InputError(f"{path}: 'images' must be uint8 (N, H, W, 3), got {x.dtype} {x.shape}")
    if y.shape != (x.shape[0],):
        raise InputError(f"{path}: 'images' has {x.shape[0]} rows but 'labels' has shape {y.shape}")
    if "class_names" not in f.attrs:
        raise InputError(f"{path}: missing attribute 'class_names'")


def store_info(path) -> StoreInfo:
    with _open(path) as f:
        _check(f, path)
        return StoreInfo(
            path=str(path),
            n=int(f["images"].shape[0]),
            image_shape=tuple(int(s) for s in f["images"].shape[1:]),
            class_names=json.loads(f.attrs["class_names"]),
            provenance=json.loads(f.attrs.get("provenance", "{}")),
            extras=tuple(sorted(set(f) - {"images", "labels"})),
        )


def read_extra(path, key: str) -> np.ndarray:
    """A per-image array stored beside the images (see write_store's `extra`), e.g. a pool's seeds."""
    with _open(path) as f:
        _check(f, path)
        if key not in f:
            raise InputError(f"{path}: missing per-image dataset '{key}' (rerun the stage that wrote it)")
        return f[key][:]


def read_labels(path) -> np.ndarray:
    with _open(path) as f:
        _check(f, path)
        return f["labels"][:]


def read_store(path, indices=None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load (images, labels, class_names) into memory, optionally only rows `indices`.

    Rows are returned in the order of `indices`. Reading goes block by block
    instead of through h5py point selection, which is orders of magnitude slower
    for tens of thousands of scattered rows.
    """
    with _open(path) as f:
        _check(f, path)
        x, y = f["images"], f["labels"]
        class_names = json.loads(f.attrs["class_names"])
        try:
            if indices is None:
                images, labels = x[:], y[:]
            else:
                indices = np.asarray(indices, dtype=np.int64)
                if len(indices) and (indices.min() < 0 or indices.max() >= x.shape[0]):
                    raise InputError(f"{path}: row indices outside [0, {x.shape[0]})")
                order = np.argsort(indices, kind="stable")
                sorted_idx = indices[order]
                images = np.empty((len(indices),) + x.shape[1:], dtype=np.uint8)
                # Walk the file once in windows of READ_BLOCK rows, keeping the
                # requested rows of each window: sequential reads, bounded memory.
                done = 0
                while done < len(sorted_idx):
                    lo = int(sorted_idx[done])
                    hi = min(lo + READ_BLOCK, x.shape[0])
                    stop = int(np.searchsorted(sorted_idx, hi, side="left"))
                    images[order[done:stop]] = x[lo:hi][sorted_idx[done:stop] - lo]
                    done = stop
                labels = y[:][indices]
        except OSError as e:  # truncated or corrupt chunks surface only on read
            raise InputError(f"{path}: failed reading data ({e}); the file is corrupt, rerun `prepare`") from e
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise InputError(f"{path}: labels outside [0, {len(class_names)}) for classes {class_names}")
    return images, labels.astype(np.int64), class_names
