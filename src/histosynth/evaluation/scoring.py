"""Checkpoint scoring (rule score_checkpoints): every snapshot's images against the real subset.

Its own module, apart from generation (histosynth.generative.generate), so that the pools'
code provenance never counts the metrics: editing one reruns scoring onward, never generation.
"""

from __future__ import annotations

import pandas as pd
from tqdm import tqdm

from histosynth.checkpoint import list_checkpoints
from histosynth.errors import InputError
from histosynth.evaluation.metrics import FrechetReference, kernel_inception_distance, precision_recall
from histosynth.fileio import write_text
from histosynth.generative.generate import SCORING_STREAM, class_labels, image_seeds, load_generator, sample_images

PR_K = 3  # k of improved precision/recall (Kynkäänniemi et al.'s default, as the quality table)


def score_checkpoints(ckpt_dir, references: dict, n_per_class: dict[int, int], out_tsv, *,
                      batch_size=256, device="cpu", seed=0, sampling=None) -> pd.DataFrame:
    """FID, KID and improved precision/recall of every snapshot against the real subset, per feature space.

    `references` maps a feature-space name to (extractor, real statistics from
    `features.load_stats`): "domain" gives the columns fid/kid, any other name
    (e.g. "inception") gives fid_<name>/kid_<name>/... Every snapshot is scored on
    the same latents (same seeds, from SCORING_STREAM: never a pool's), so
    differences between epochs come from the weights, not from sampling noise; the
    images are generated once per snapshot and shared by all feature spaces.
    """
    from histosynth.evaluation.features import extract_features, gaussian_stats  # torchvision: only scoring needs it

    snapshots = list_checkpoints(ckpt_dir)
    if not snapshots:
        raise InputError(f"{ckpt_dir}: no generator snapshots to score (check save_from < epochs)")
    labels = class_labels(n_per_class)
    seeds = image_seeds(seed, len(labels), SCORING_STREAM)
    # The real side of every Fréchet distance is factorised once; each snapshot pays only its own part.
    # On a GPU, in float64 there (NumPy on the CPU).
    on = str(device) if str(device).startswith("cuda") else None
    frechet = {space: FrechetReference(real["mu"], real["sigma"], on) for space, (_, real) in references.items()}
    rows = []
    for epoch, path in tqdm(snapshots, desc="score checkpoints"):
        images = sample_images(load_generator(path, device, sampling), labels, seeds, batch_size, device)
        row = {"epoch": epoch}
        for space, (extractor, real) in references.items():
            suffix = "" if space == "domain" else f"_{space}"
            # FID is Inception's by name; in a lab encoder's space it is a Fréchet distance, fd_<name>.
            fd = "fid" if space in ("domain", "inception") else "fd"
            fake = extract_features(extractor, images, batch_size, device)
            mu, sigma = gaussian_stats(fake)
            kid, kid_std = kernel_inception_distance(real["features"], fake, n_subsets=20, seed=seed)
            precision, recall = precision_recall(real["features"], fake, PR_K)
            row |= {f"{fd}{suffix}": frechet[space].distance(mu, sigma),
                    f"kid{suffix}": kid, f"kid{suffix}_std": kid_std,
                    f"precision{suffix}": precision, f"recall{suffix}": recall}
        rows.append(row)
        print(f"[score_checkpoints] epoch {epoch}: " + " ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
    table = pd.DataFrame(rows)
    write_text(out_tsv, table.to_csv(sep="\t", index=False, float_format="%.6f"))
    return table


def score_training_run(ckpt_dir, train, subset, out_tsv, *, real, images_per_class: int, batch_size: int,
                       device: str, seed: int, sampling=None) -> pd.DataFrame:
    """score_checkpoints for one training run: `images_per_class` images of each class of the real
    `subset` of the `train` store (fewer for a smaller class), in the spaces of `real`
    (spaces.RealFeatures)."""
    from histosynth.data.split import read_subset
    from histosynth.data.store import read_store
    from histosynth.evaluation.draws import scoring_counts
    from histosynth.torch_utils import sampling_device

    _, labels, class_names = read_store(train, read_subset(subset))
    counts = scoring_counts(labels, len(class_names), images_per_class)
    return score_checkpoints(ckpt_dir, real.spaces(len(class_names)), counts, out_tsv, batch_size=batch_size,
                             device=sampling_device(device), seed=seed, sampling=sampling)
