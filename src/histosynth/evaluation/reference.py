"""The real-vs-real reference every generator number is read against, and the convergence verdict.

A synthetic set's FID says little on its own: its size, the class mix and the feature
space all move it. So per subset, the real *validation* images (never trained on)
are compared with the real training subset exactly as synthetic sets are, drawn with
the same number of images per class (rule `reference_quality`):

  * ``scoring``: as many as checkpoint scoring generates (in train_generator), the
    line drawn on every FID curve;
  * ``kept``: r·N_i per class, as every filter keeps: the quality table's
    "Real (validation vs training subset)" row, and what each generator row's FID is
    a multiple of.

The same draw of validation images, decoded from the VAE's latents, gives the
reconstruction FID that bounds a latent-diffusion model (rule `vae_quality`).

The verdict (rule `convergence`): the selected snapshot's first r·N_i pool images per
class (filter `none`'s set; pool latents were never used to select the snapshot) are
scored like the reference. A generator is *not converged* when its FID is more than
`max_fid_ratio` times the reference's or its recall is below `min_recall`: its images
are then far from tissue, and classifier deltas from them are noise, not evidence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from histosynth.errors import InputError
from histosynth.evaluation import memorisation as mem
from histosynth.evaluation.draws import scoring_counts, target_counts
from histosynth.evaluation.quality import class_quality, quality_metrics
from histosynth.fileio import write_json

DESIGNS = ("scoring", "kept")


def draw_per_class(labels: np.ndarray, counts: Mapping[int, int], seed: int = 0) -> np.ndarray:
    """Sorted indices of counts[c] images of every class c (all of them when the class has fewer)."""
    rng = np.random.default_rng(seed)
    picked = []
    for c, n in sorted(counts.items()):
        idx = np.flatnonzero(labels == c)
        picked.append(idx if len(idx) <= n else rng.choice(idx, n, replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def first_per_class(labels: np.ndarray, counts: Mapping[int, int]) -> np.ndarray:
    """Indices of the first counts[c] images of every class c, in order (filter `none`'s rule)."""
    return np.concatenate([np.flatnonzero(labels == c)[:n] for c, n in sorted(counts.items())])


def _metrics(real: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray], quality: Mapping) -> dict:
    return {space: {**quality_metrics(real[space], feats, k=quality["k"], kid_subsets=quality["kid_subsets"],
                                      seed=quality["seed"]), "n_real": len(real[space]), "n_fake": len(feats)}
            for space, feats in other.items()}


def write_reference(path, real: Mapping[str, np.ndarray], valid: Mapping[str, Mapping[str, np.ndarray]],
                    counts: Mapping[str, Mapping[int, int]], *, subset, quality: Mapping,
                    labels: tuple | None = None, memorisation: Mapping | None = None) -> dict:
    """Real validation vs real training subset, per design and feature space, as JSON.

    real[space]: the subset's features; valid[design][space]: the features of that
    design's validation draw (draw_per_class with counts[design]). With `labels` =
    (real labels, {design: the draw's labels}, class names) each design also gets
    `per_class`, the reference row of the quality table's class blocks. `memorisation`:
    the copy thresholds (`thresholds`, ...: histosynth.evaluation.memorisation) and, per
    design, the audit of its draw (what the rule flags among unseen real images).
    """
    if set(valid) != set(DESIGNS) or set(counts) != set(DESIGNS):
        raise InputError(f"the reference needs the designs {list(DESIGNS)}, got {sorted(valid)}")
    result = {"subset": subset, "quality": dict(quality)}
    for design in DESIGNS:
        result[design] = {"counts": {str(c): int(n) for c, n in counts[design].items()},
                          **_metrics(real, valid[design], quality)}
        if labels is not None:
            real_labels, draw_labels, class_names = labels
            per_space = {space: class_quality(real[space], real_labels, feats, draw_labels[design], class_names,
                                              k=quality["k"], kid_subsets=quality["kid_subsets"], seed=quality["seed"])
                         for space, feats in valid[design].items()}
            result[design]["per_class"] = {str(n): {space: per_space[space][str(n)] for space in per_space}
                                           for n in class_names}
    if memorisation is not None:
        result["memorisation"] = {k: v for k, v in memorisation.items() if k not in DESIGNS}
        for design in DESIGNS:
            result[design]["memorisation"] = memorisation[design]
    write_json(path, result)
    return result


def write_vae_quality(path, real_features: np.ndarray, reconstructed_features: np.ndarray, *, subset,
                      quality: Mapping, psnr: float) -> dict:
    """The VAE's reconstructions of the reference's `kept` validation draw vs the training subset (domain)."""
    result = {"subset": subset, "psnr": psnr,
              **_metrics({"domain": real_features}, {"domain": reconstructed_features}, quality)}
    write_json(path, result)
    return result


def verdict(fid: float, recall: float, reference_fid: float, *, max_fid_ratio: float, min_recall: float) -> dict:
    """Whether a generator's images are near real-vs-real: FID <= max_fid_ratio x reference and recall >= min_recall."""
    ratio = fid / reference_fid if reference_fid > 0 else math.inf
    return {"fid": fid, "reference_fid": reference_fid, "fid_ratio": ratio, "recall": recall,
            "converged": bool(ratio <= max_fid_ratio and recall >= min_recall),
            "rule": f"FID ≤ {max_fid_ratio:g}× the real-vs-real FID and recall ≥ {100 * min_recall:g} %"}


def write_convergence(path, real_features: np.ndarray, pool_features: np.ndarray, reference: Mapping, *,
                      generator: str, subset, epoch: int | None, quality: Mapping, max_fid_ratio: float,
                      min_recall: float, memorisation: Mapping | None = None) -> dict:
    """Score the selected snapshot's `kept`-sized pool draw like the reference and write the verdict (JSON),
    with the pool's memorisation audit when given. `epoch` is None for an external set (no snapshots)."""
    metrics = _metrics({"domain": real_features}, {"domain": pool_features}, quality)["domain"]
    ref = reference["kept"]["domain"]
    result = {"generator": generator, "subset": subset, "epoch": None if epoch is None else int(epoch),
              **verdict(metrics["fid"], metrics["recall"], ref["fid"], max_fid_ratio=max_fid_ratio,
                        min_recall=min_recall),
              "pool": metrics, "reference": ref, **({"memorisation": dict(memorisation)} if memorisation else {})}
    write_json(path, result)
    state = "converged" if result["converged"] else "NOT CONVERGED"
    print(f"[convergence] {generator} subset {subset}: {state}: FID {metrics['fid']:.4g} = "
          f"{result['fid_ratio']:.2f}x the reference {ref['fid']:.4g}, recall {metrics['recall']:.2f} "
          f"({result['rule']})")
    return result


# ---------------------------------------------------------------------------
# The stages, from files


def reference_draws(train, subset, valid_labels: np.ndarray, *, images_per_class: int, ratio: float,
                    seed: int) -> tuple[dict, dict]:
    """({design: counts per class}, {design: indices into the validation store}): the validation
    images each design compares with the real subset of the `train` store."""
    from histosynth.data.split import read_subset
    from histosynth.data.store import read_labels, store_info

    labels = read_labels(train)[read_subset(subset)]
    n_classes = len(store_info(train).class_names)
    counts = {"scoring": scoring_counts(labels, n_classes, images_per_class),
              "kept": target_counts(labels, n_classes, ratio)}
    return counts, {d: draw_per_class(valid_labels, c, seed) for d, c in counts.items()}


def measure_reference(train, subset, valid, out, *, real, subset_index: int, images_per_class: int, ratio: float,
                      quality: Mapping, batch_size: int, device: str) -> dict:
    """Real validation vs the real training subset, drawn like checkpoint scoring and like the
    filters' kept sets, in every feature space of `real` (spaces.RealFeatures)."""
    from histosynth.data.split import read_subset
    from histosynth.data.store import read_labels, read_store, store_info
    from histosynth.evaluation.features import extract_features
    from histosynth.torch_utils import sampling_device

    device = sampling_device(device)
    valid_labels = read_labels(valid)
    counts, draws = reference_draws(train, subset, valid_labels, images_per_class=images_per_class,
                                    ratio=ratio, seed=quality["seed"])
    class_names = store_info(valid).class_names
    spaces = real.spaces(len(class_names))
    # Every validation image in the domain space, once: the copy thresholds need them all, and the
    # draws are rows of them; the other spaces see the draws only.
    every_valid = read_store(valid)[0]
    valid_domain = extract_features(spaces["domain"][0], every_valid, batch_size, device)
    features = {d: {space: valid_domain[idx] if space == "domain" else
                    extract_features(ext, every_valid[idx], batch_size, device) for space, (ext, _) in spaces.items()}
                for d, idx in draws.items()}
    train_images, train_labels, _ = read_store(train, read_subset(subset))
    labels = (train_labels, {d: valid_labels[idx] for d, idx in draws.items()}, class_names)
    # The copy thresholds from every validation image (the rule's held-out distances), and the rule's
    # verdict on each draw: how many unseen real images it calls copies.
    training = mem.training_spaces(train_images, spaces["domain"][1]["features"])
    thresholds = mem.copy_thresholds(mem.image_spaces(every_valid, valid_domain), training)
    memorisation = {"rule": mem.RULE, "thresholds": thresholds, "n_valid": len(every_valid),
                    **{d: mem.measure(every_valid[idx], features[d]["domain"], labels[1][d], class_names, training,
                                      thresholds)[0] for d, idx in draws.items()}}
    return write_reference(out, {space: stats["features"] for space, (_, stats) in spaces.items()}, features, counts,
                           subset=subset_index, quality=quality, labels=labels, memorisation=memorisation)


def judge_convergence(pool_path, pool_features_path, choice_path, curve_path, reference_path, train, subset, out,
                      plot_path, memorisation_path, *, real_stats, generator: str, subset_index: int, ratio: float,
                      quality: Mapping, converged: Mapping, metric: str, alpha: float) -> dict:
    """Is the selected snapshot near real-vs-real? Its pool's first r·N_i per class (domain features:
    `pool_features_path`) scored like the reference against the subset's (`real_stats`), the verdict
    written with the memorisation audit of the whole pool (every image's nearest training image:
    `memorisation_path`), and the checkpoint curve drawn against the reference. An external set
    (histosynth.data.external) has no snapshot: `choice_path`, `curve_path` and `plot_path` are None."""
    import json

    import pandas as pd

    from histosynth.checkpoint import selected_snapshot
    from histosynth.data.split import read_subset
    from histosynth.data.store import read_store
    from histosynth.evaluation.features import load_pool_features, load_stats
    from histosynth.evaluation.selection import plot_curve

    train_images, labels, class_names = read_store(train, read_subset(subset))
    with open(reference_path) as f:
        reference = json.load(f)
    epoch = selected_snapshot(choice_path)[0] if choice_path else None
    pool, pool_labels, _ = read_store(pool_path)
    draw = first_per_class(pool_labels, target_counts(labels, len(class_names), ratio))
    stats = load_stats(real_stats)
    pool_features = load_pool_features(pool_features_path, len(pool))  # rule pool_features
    copies, _ = mem.measure(pool, pool_features, pool_labels, class_names,
                            mem.training_spaces(train_images, stats["features"]),
                            mem.read_thresholds(reference_path), memorisation_path)
    result = write_convergence(out, stats["features"], pool_features[draw], reference, generator=generator,
                               subset=subset_index, epoch=epoch, quality=quality,
                               max_fid_ratio=converged["max_fid_ratio"], min_recall=converged["min_recall"],
                               memorisation={k: v for k, v in copies.items() if k != "closest"})
    if plot_path is None:
        return result
    state = "converged" if result["converged"] else "NOT CONVERGED"
    title = (f"{generator}, subset {subset_index}: {state} (pool FID {result['fid_ratio']:.1f}x real vs real, "
             f"recall {100 * result['recall']:.0f} %)")
    plot_curve(pd.read_csv(curve_path, sep="\t"), metric, alpha, epoch, plot_path, title,
               reference=reference["scoring"])
    return result
