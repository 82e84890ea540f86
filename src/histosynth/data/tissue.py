"""Tissue detection and spatially disjoint patch grids for the `demo` dataset.

A large image is tiled into square regions; whole regions go to train, valid or
test, and patches are cut strictly inside one region. Two patches of different
splits therefore never share a pixel, which is what keeps neighbouring,
near-duplicate patches from leaking between training and evaluation.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SPLITS = ("train", "valid", "test")
SPLIT_COLOURS = {"train": "tab:blue", "valid": "tab:orange", "test": "tab:green"}

# Glass is near-grey (HSV saturation ~0-0.05); every stained tissue, even pale
# stroma, is above this. Otsu alone would cut a tile that is *all* tissue (no
# background mode) in two, through the tissue; the cap stops that.
MAX_BACKGROUND_SATURATION = 0.15


def otsu_threshold(values: np.ndarray) -> int:
    """The uint8 threshold t maximising the between-class variance of {v <= t} vs {v > t}."""
    hist = np.bincount(np.asarray(values, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    p = hist / hist.sum()
    w0 = np.cumsum(p)                      # weight of the class below or at t
    mu = np.cumsum(p * np.arange(256))     # its unnormalised mean
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * (1.0 - w0))
    return int(np.nanargmax(between)) if np.isfinite(between).any() else 0


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max as uint8 0..255."""
    rgb = np.asarray(rgb)
    hi = rgb.max(axis=-1).astype(np.int32)
    lo = rgb.min(axis=-1).astype(np.int32)
    return ((hi - lo) * 255 // np.maximum(hi, 1)).astype(np.uint8)


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean HxW mask of stained tissue in an H&E image (uint8 HxWx3).

    Background (glass) is bright *and* unsaturated, while haematoxylin and eosin
    both add colour; saturation separates the two better than brightness, which
    confuses pale eosin-stained stroma or fat with glass. The threshold is Otsu's
    on saturation, capped (see MAX_BACKGROUND_SATURATION). Light smoothing before
    and an opening after remove single-pixel noise and dust specks.
    """
    sat = ndimage.uniform_filter(saturation(rgb), size=5)
    threshold = min(otsu_threshold(sat), int(MAX_BACKGROUND_SATURATION * 255))
    mask = sat > threshold
    return ndimage.binary_opening(mask, structure=np.ones((5, 5), bool))


def assign_regions(weights, split_fractions: dict, seed: int) -> np.ndarray:
    """Split index (into list(split_fractions)) per region; -1 for regions of weight 0.

    Regions are visited in a seeded random order. When there are at least as many
    nonempty regions as splits, the first ones go one to each split, so no split is
    empty; each further region goes to the split furthest below its share of the
    weight (patch count) assigned so far, so split sizes track the fractions.
    """
    weights = np.asarray(weights, dtype=np.float64)
    fractions = np.array(list(split_fractions.values()), dtype=np.float64)
    order = np.random.default_rng(seed).permutation(np.flatnonzero(weights > 0))
    assigned = np.full(len(weights), -1, dtype=np.int64)
    totals = np.zeros(len(fractions))
    seed_each_split = len(order) >= len(fractions)
    for k, region in enumerate(order):
        if seed_each_split and k < len(fractions):
            split = k
        else:
            split = int(np.argmax(fractions * (totals.sum() + weights[region]) - totals))
        assigned[region] = split
        totals[split] += weights[region]
    return assigned


def summed_area_table(mask: np.ndarray) -> np.ndarray:
    """(H+1, W+1) table whose [y, x] is the count of True in mask[:y, :x]."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)
    return table


def box_fraction(table: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Fraction of True pixels inside each (y0, x0, y1, x1) box, from a summed-area table."""
    y0, x0, y1, x1 = np.asarray(boxes).T
    inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return inside / ((y1 - y0) * (x1 - x0))


def region_boxes(shape, region_size: int) -> np.ndarray:
    """(n, 4) boxes y0, x0, y1, x1 tiling an image of `shape`; edge regions are clipped."""
    h, w = shape[:2]
    return np.array([(y, x, min(y + region_size, h), min(x + region_size, w))
                     for y in range(0, h, region_size) for x in range(0, w, region_size)], dtype=np.int64)


def grid_patches(image, mask, patch_size: int, stride: int, region_size: int, split_fractions: dict,
                 min_tissue: float, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Cut patches on a grid inside spatially disjoint regions, one split per region.

    Returns {split: (patches uint8 (n, p, p, 3), boxes int64 (n, 4) as y0, x0, y1, x1)}
    for every split in `split_fractions`. A patch is kept when at least `min_tissue`
    of its pixels are tissue in `mask`.
    """
    image = np.asarray(image)
    table = summed_area_table(mask)
    per_region = []
    for ry0, rx0, ry1, rx1 in region_boxes(mask.shape, region_size):
        ys = np.arange(ry0, ry1 - patch_size + 1, stride)
        xs = np.arange(rx0, rx1 - patch_size + 1, stride)
        yy, xx = (g.ravel() for g in np.meshgrid(ys, xs, indexing="ij"))
        boxes = np.stack([yy, xx, yy + patch_size, xx + patch_size], axis=1).astype(np.int64)
        if len(boxes):
            boxes = boxes[box_fraction(table, boxes) >= min_tissue]
        per_region.append(boxes)
    split_of_region = assign_regions([len(b) for b in per_region], split_fractions, seed)
    out = {}
    for s, split in enumerate(split_fractions):
        parts = [b for b, r in zip(per_region, split_of_region) if r == s]
        boxes = np.concatenate(parts) if parts else np.zeros((0, 4), np.int64)
        patches = np.zeros((len(boxes), patch_size, patch_size, 3), np.uint8)
        for i, (y0, x0, y1, x1) in enumerate(boxes):
            patches[i] = image[y0:y1, x0:x1]
        out[split] = (patches, boxes)
    return out


def plot_regions(path, image, patches_by_split: dict, region_size: int, title: str = "",
                 max_pixels: int = 1000) -> None:
    """PNG of the (downscaled) image with each split's regions shaded and kept patches outlined.

    A region's extent is recovered from its patches (every patch lies inside one
    region), so the figure shows exactly what went where.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    image = np.asarray(image)
    h, w = image.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / max_pixels)))  # plain subsampling is enough for a preview
    fig = Figure(figsize=(7, 7 * h / w + 0.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(image[::step, ::step], extent=(0, w, h, 0), interpolation="antialiased")

    def rectangles(boxes):
        return [[(x0, y0), (x1, y0), (x1, y1), (x0, y1)] for y0, x0, y1, x1 in boxes]

    handles = []
    for split, (_, boxes) in patches_by_split.items():
        colour = SPLIT_COLOURS.get(split, "tab:red")
        cells = np.unique(np.asarray(boxes)[:, :2] // region_size, axis=0) if len(boxes) else np.zeros((0, 2), int)
        regions = [(y * region_size, x * region_size, min((y + 1) * region_size, h), min((x + 1) * region_size, w))
                   for y, x in cells]
        ax.add_collection(PolyCollection(rectangles(regions), facecolors=colour, alpha=0.3, edgecolors=colour,
                                         linewidths=1.0))
        ax.add_collection(PolyCollection(rectangles(boxes), facecolors="none", edgecolors=colour,
                                         linewidths=0.3))
        handles.append(Patch(color=colour, alpha=0.6,
                             label=f"{split}: {len(regions)} regions, {len(boxes)} patches"))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_title(title, fontsize=9)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.savefig(path, format="png", bbox_inches="tight")
