"""Checkpoint scoring: each snapshot's images against the real subset, as training writes it.

Training (histosynth.generative.training) scores every snapshot the moment it is saved and
keeps only those some selection could choose, so a run never holds hundreds of them on
disk. Its own module, apart from generation (histosynth.generative.generate), so that the
pools' code provenance never counts the metrics.
"""

from __future__ import annotations

from pathlib import Path

import torch

from histosynth.checkpoint import load_checkpoint
from histosynth.evaluation.metrics import FrechetReference, kernel_inception_distance, precision_recall
from histosynth.generative.families import family_module
from histosynth.generative.generate import SCORING_STREAM, class_labels, image_seeds, sample_images

PR_K = 3  # k of improved precision/recall (Kynkäänniemi et al.'s default, as the quality table)


class CheckpointScorer:
    """FID, KID and improved precision/recall of a snapshot against the real subset, per feature space.

    `references` maps a feature-space name to (extractor, real statistics from
    `features.load_stats`): "domain" gives the columns fid/kid, any other name (e.g.
    "inception") gives fid_<name>/kid_<name>/... Every snapshot is scored on the same
    latents (same seeds, from SCORING_STREAM: never a pool's), so differences between
    epochs come from the weights, not from sampling noise; the images are generated once
    per snapshot and shared by all feature spaces. `critic_data`: for families whose critic
    classifies, {"valid": (images, labels), "test": ...}: the class head's metrics on each
    (critic_valid_auc, critic_test_auc, ...), which strategy `unified` chooses from.
    """

    def __init__(self, references: dict, n_per_class: dict[int, int], *, batch_size=256, device="cpu", seed=0,
                 sampling=None, critic_data=None):
        self.references, self.batch_size, self.device, self.seed = references, batch_size, device, seed
        self.sampling, self.critic_data = sampling, critic_data or {}
        self.labels = class_labels(n_per_class)
        self.seeds = image_seeds(seed, len(self.labels), SCORING_STREAM)
        # The real side of every Fréchet distance is factorised once; each snapshot pays only its own part.
        # On a GPU, in float64 there (NumPy on the CPU).
        on = str(device) if str(device).startswith("cuda") else None
        self.frechet = {space: FrechetReference(real["mu"], real["sigma"], on) for space, (_, real) in references.items()}

    def __call__(self, snapshot_path) -> dict[str, float]:
        """The snapshot's scores; the caller's random streams are left as they were (training resumes
        bit-identically whether or not it scores)."""
        from histosynth.evaluation.features import extract_features, gaussian_stats  # torchvision: only scoring

        devices = [torch.device(self.device)] if torch.device(self.device).type == "cuda" else []
        state = load_checkpoint(snapshot_path)  # once: a ViT-cGAN's holds 258 MB, generator and critic
        with torch.random.fork_rng(devices=devices):
            G = family_module(state["family"]).load_generator(state, self.device, self.sampling)
            images = sample_images(G, self.labels, self.seeds, self.batch_size, self.device)
            row = {}
            for space, (extractor, real) in self.references.items():
                suffix = "" if space == "domain" else f"_{space}"
                # FID is Inception's by name; in a lab encoder's space it is a Fréchet distance, fd_<name>.
                fd = "fid" if space in ("domain", "inception") else "fd"
                fake = extract_features(extractor, images, self.batch_size, self.device)
                mu, sigma = gaussian_stats(fake)
                kid, kid_std = kernel_inception_distance(real["features"], fake, n_subsets=20, seed=self.seed)
                precision, recall = precision_recall(real["features"], fake, PR_K)
                row |= {f"{fd}{suffix}": self.frechet[space].distance(mu, sigma),
                        f"kid{suffix}": kid, f"kid{suffix}_std": kid_std,
                        f"precision{suffix}": precision, f"recall{suffix}": recall}
            if self.critic_data:
                row |= critic_scores(state, self.critic_data, self.batch_size, self.device)
        return row


@torch.no_grad()
def critic_scores(state: dict, data: dict, batch_size: int, device) -> dict[str, float]:
    """critic_<split>_<metric>: a loaded snapshot's class head as a classifier on each split of `data`
    ({split: (uint8 images, labels)}), through its family's load_critic."""
    from histosynth.classification.classifier import scores_for_metrics
    from histosynth.classification.metrics import classification_metrics

    classify = family_module(state["family"]).load_critic(state, device)
    return {f"critic_{split}_{k}": v for split, (x, y) in data.items()
            for k, v in classification_metrics(y, scores_for_metrics(classify(x, batch_size))).items()}


def spec_key(spec: dict) -> str:
    """What a run's scores, and so the snapshots it keeps, depend on: the settings of `spec`
    (run_scorer's) and the content of the real statistics and extractor it reads. A training
    resumes only under the same key: the snapshots another scoring would keep are gone."""
    import hashlib
    import json

    def digest(path):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None

    files = {k: digest(spec.get(k)) for k in ("extractor", "stats", "inception_stats")}
    files["encoder_stats"] = {name: digest(p) for name, p in (spec.get("encoder_stats") or {}).items()}
    settings = {k: spec.get(k) for k in ("backbone", "images_per_class", "batch_size", "seed", "sampling", "encoders")}
    settings["critic"] = bool(spec.get("valid") or spec.get("test"))
    return json.dumps({**settings, **files}, sort_keys=True, default=str)


def run_scorer(spec: dict, train, subset, device):
    """The CheckpointScorer of one training run from the plain settings `spec` (rule train_generator's
    `scoring` params plus its input files): `images_per_class` images of each class of the real
    `subset` of the `train` store (fewer for a smaller class), in every configured feature space;
    with `valid` and `test` stores, the critic's class head is scored on both."""
    from histosynth.data.split import read_subset
    from histosynth.data.store import read_store
    from histosynth.errors import InputError
    from histosynth.evaluation.draws import scoring_counts
    from histosynth.evaluation.spaces import RealFeatures, encoders_from
    from histosynth.torch_utils import sampling_device

    real = RealFeatures(spec["extractor"], spec["stats"], spec["backbone"], spec.get("inception_weights"),
                        spec.get("inception_stats"), encoders_from(spec.get("encoders"), spec.get("encoder_stats")))
    _, labels, class_names = read_store(train, read_subset(subset))
    critic_data = {}
    for split in ("valid", "test"):
        if spec.get(split):
            x, y, names = read_store(spec[split])
            if names != class_names:
                raise InputError(f"{spec[split]}: classes {names} differ from the training store's {class_names}")
            critic_data[split] = (x, y)
    counts = scoring_counts(labels, len(class_names), spec["images_per_class"])
    return CheckpointScorer(real.spaces(len(class_names)), counts, batch_size=spec["batch_size"],
                            device=sampling_device(device), seed=spec["seed"], sampling=spec.get("sampling"),
                            critic_data=critic_data)
