"""The `filter` stage: one named filter over a generator's pool, drawing more images when short.

The selection rules live in `filters.py`; this module scores a pool for the
named filter, applies the rule for a target of r·N_i images per class, and
writes the survivors with their scores. The threshold filters (`realism`,
`realism_class`, `confidence`) can pass fewer images than the target; then more
are generated from the selected checkpoint (seeds continuing the pool's) and
scored until every class is full, as the latent-diffusion paper keeps
real:synthetic at 1:1. How many were drawn is recorded. An external set
(histosynth.data.external) has no checkpoint to draw from: a threshold filter
short of its target there is an error that says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from histosynth.data.store import read_extra, read_store, store_info, write_store
from histosynth.errors import InputError
from histosynth.evaluation import filters
from histosynth.evaluation.metrics import realism_score
from histosynth.evaluation.draws import target_counts
from histosynth.fileio import write_json
from histosynth.generative.families import FAMILIES, family_module
from histosynth.registry import FILTERS, filter_name



@dataclass(frozen=True)
class FilterConfig:
    name: str
    ratio: float = 0.5  # r: images kept per real image of the class
    mc_dropout: float = 0.5  # HistoGAN §4.2.2: dropout p before the last residual block ...
    mc_passes: int = 5  # ... and K = 5 MC passes
    realism_k: int = 3  # k-NN of the realism score (Kynkäänniemi et al.)
    realism_threshold: float = 1.0  # keep R >= 1 (latent-diffusion §3.3)
    confidence_threshold: float = 0.6  # keep p(label) > λ (ViT-cGAN Algorithm 2)
    max_draw_factor: float = 10.0  # top-up: give up after drawing this many × the target
    batch_size: int = 256
    seed: int = 0
    exclude_copies: bool = False  # drop the memorisation audit's likely copies (histosynth.evaluation.memorisation)

    def __post_init__(self):
        object.__setattr__(self, "name", filter_name(self.name))  # an old alias, e.g. histogan
        if self.name not in FILTERS:
            raise InputError(f"filter '{self.name}' is not one of {list(FILTERS)}")


class _Scorer:
    """Per-image scores of one threshold filter, from the domain classifier trained on the real subset."""

    def __init__(self, cfg: FilterConfig, classifier_path, backbone, n_classes, real_features, real_labels, device,
                 snapshot_path=None):
        from histosynth.classification.classifier import build_classifier, eval_batches, predict_proba
        from histosynth.evaluation.features import domain_extractor, extract_features

        self.cfg, self.device = cfg, torch.device(device)
        self.real_features, self.real_labels = real_features, real_labels
        classify = _critic(snapshot_path, self.device) if cfg.name == "confidence" else None
        if classify is not None:
            # ViT-cGAN's own class head judges its images (vit-cgan-unified-framework.md Algorithm 2).
            self.score_images = lambda x, y, features=None: classify(x, cfg.batch_size)[np.arange(len(y)), y]
        elif cfg.name == "confidence":
            model = build_classifier(backbone, n_classes)
            try:
                model.load_state_dict(torch.load(classifier_path, map_location="cpu", weights_only=True))
            except Exception as e:
                raise InputError(f"{classifier_path}: not a {backbone} classifier with {n_classes} classes ({e})") from e
            model.to(self.device)
            self.score_images = lambda x, y, features=None: predict_proba(
                model, eval_batches(x, cfg.batch_size, self.device))[np.arange(len(y)), y]
        else:
            extractor = domain_extractor(classifier_path, backbone, n_classes)
            self.features = lambda x: extract_features(extractor, x, cfg.batch_size, self.device)
            self.score_images = self._realism

    def _realism(self, images, labels, features=None):
        fake = self.features(images) if features is None else features
        k = self.cfg.realism_k
        if self.cfg.name == "realism_class":
            return filters.per_class_realism(self.real_features, self.real_labels, fake, labels, realism_score, k=k)
        return realism_score(self.real_features, fake, k=k)

    def select(self, labels, scores, targets, excluded):
        """The threshold rule, with the `excluded` images failing it whatever their score."""
        if self.cfg.name == "confidence":
            return filters.confidence_select(labels, np.where(excluded, 0.0, scores), targets,
                                             self.cfg.confidence_threshold)
        return filters.realism_select(labels, np.where(excluded, -np.inf, scores), targets, self.cfg.realism_threshold)


def _copy_audit(cfg: FilterConfig, reference_path, real_images, real_features, classifier_path, backbone: str,
                n_classes: int, device):
    """images -> which are likely copies of a training image: the memorisation audit of the quality
    stage, with its thresholds (reference.json); or, without exclude_copies, none are."""
    if not cfg.exclude_copies:
        return lambda images, features=None: np.zeros(len(images), dtype=bool)
    if reference_path is None:
        raise InputError(f"filter '{cfg.name}': exclude_copies needs the reference file with the copy thresholds")
    from histosynth.evaluation import memorisation as mem
    from histosynth.evaluation.features import domain_extractor, extract_features

    thresholds = mem.read_thresholds(reference_path)
    extractor = domain_extractor(classifier_path, backbone, n_classes)
    train = mem.training_spaces(real_images, real_features)
    def is_copy(images, features=None):
        if features is None:
            features = extract_features(extractor, images, cfg.batch_size, device)
        return mem.audit(mem.image_spaces(images, features), train, thresholds)["copy"]

    return is_copy


def _critic(snapshot_path, device):
    """images, batch_size -> class probabilities from the critic of a snapshot whose family's
    critic classifies (the ViT-cGAN's class head); None for other generators."""
    if snapshot_path is None:
        return None
    from histosynth.checkpoint import load_checkpoint

    state = load_checkpoint(snapshot_path)
    family = state.get("family")
    if family not in FAMILIES or not FAMILIES[family].critic_classifies:
        return None
    return family_module(family).load_critic(state, device)


def filter_pool(cfg: FilterConfig, pool_path, real_images: np.ndarray, real_labels: np.ndarray,
                real_features: np.ndarray, classifier_path, backbone: str, snapshot_path, out_path, summary_path,
                device="cpu", sampling=None, reference_path=None, pool_features=None) -> dict:
    """Select r·N_i images per class from the pool at `pool_path`; write them (+ scores) and a summary.

    `sampling`: latent diffusion's sampler settings, for images drawn beyond the pool.
    `pool_features`: the pool's domain features (rule pool_features), for the realism scores and
    the audit, so only images drawn beyond the pool are extracted here.
    `reference_path`: reference.json, whose copy thresholds exclude_copies applies: the likely
    copies are passed over (`none`: the next pool images; `selective`: ranked last in both
    halvings; threshold filters: they fail, and images drawn beyond the pool are audited too)."""
    images, labels, class_names = read_store(pool_path)
    seeds = read_extra(pool_path, "seeds") if "seeds" in store_info(pool_path).extras else None  # None: external
    n_classes = len(class_names)
    targets = target_counts(real_labels, n_classes, cfg.ratio)
    is_copy = _copy_audit(cfg, reference_path, real_images, real_features, classifier_path, backbone, n_classes,
                          device)
    copy = is_copy(images, pool_features)
    scores: dict[str, np.ndarray] = {}
    drawn = 0
    if cfg.name == "none":
        eligible = np.flatnonzero(~copy)
        keep = eligible[filters.select_first(labels[eligible], targets)]
    elif cfg.name == "selective":
        model = filters.load_mc_dropout_model(classifier_path, backbone, n_classes, p=cfg.mc_dropout)
        kw = {"batch_size": cfg.batch_size, "device": device, "seed": cfg.seed}
        centroids = filters.class_centroids(model, real_images, real_labels, **kw)
        entropy, distance = filters.mc_dropout_scores(model, images, labels, centroids, passes=cfg.mc_passes, **kw)
        last = lambda x: np.where(copy, x.max() + 1.0, x)  # noqa: E731  (likely copies rank last)
        keep, scores = filters.histogan_select(labels, last(entropy), last(distance), targets), {"entropy": entropy,
                                                                                               "distance": distance}
        if copy[keep].any():
            raise InputError(f"filter 'selective': {int(copy[keep].sum())} likely copies of training images are "
                             "among the kept images even ranked last (more than a quarter of a class's pool): "
                             "raise generation.pool_factor, or look at the generator's memorisation audit")
    else:
        scorer = _Scorer(cfg, classifier_path, backbone, n_classes, real_features, real_labels, device,
                         snapshot_path)
        score = scorer.score_images(images, labels, pool_features)  # features: realism filters only
        keep, short = scorer.select(labels, score, targets, copy)
        G = None
        while any(short.values()):
            if seeds is None:
                raise InputError(
                    f"filter '{cfg.name}': of the external set's pool ({pool_path}), too few images pass to keep "
                    "r·N_i per class: short of " + ", ".join(f"{n} {class_names[c]}" for c, n in short.items() if n)
                    + "; an external set cannot be sampled further: give more images, lower the filter's "
                      "threshold or generation.ratio")
            if drawn >= cfg.max_draw_factor * sum(targets.values()):
                raise InputError(
                    f"filter '{cfg.name}': after drawing {drawn} extra images, still short of "
                    + ", ".join(f"{n} {class_names[c]}" for c, n in short.items() if n)
                    + " passing images; the generator rarely passes this threshold (lower it, or raise "
                      "filtering.max_draw_factor)")
            from histosynth.generative.generate import class_labels, load_generator, sample_images

            G = G or load_generator(snapshot_path, device, sampling)
            # Twice the shortfall (at least one batch's worth), with seeds continuing the pool's.
            new_labels = class_labels({c: max(2 * n, 32) for c, n in short.items() if n})
            new_seeds = seeds.max() + 1 + np.arange(len(new_labels))
            new_images = sample_images(G, new_labels, new_seeds, cfg.batch_size, device)
            images, labels = np.concatenate([images, new_images]), np.concatenate([labels, new_labels])
            seeds = np.concatenate([seeds, new_seeds])
            score = np.concatenate([score, scorer.score_images(new_images, new_labels)])
            copy = np.concatenate([copy, is_copy(new_images)])
            drawn += len(new_labels)
            keep, short = scorer.select(labels, score, targets, copy)
            print(f"[filter] {cfg.name}: drew {len(new_labels)} more images ({drawn} in all); short: {short}")
        scores = {"score": score}
    kept = np.bincount(labels[keep], minlength=n_classes)
    summary = {"filter": cfg.name, "settings": asdict(cfg), "pool": int(len(labels) - drawn), "drawn": drawn,
               "target": {class_names[c]: n for c, n in targets.items()},
               "kept": {class_names[c]: int(kept[c]) for c in range(n_classes)},
               **({"copies_excluded": int(copy.sum())} if cfg.exclude_copies else {})}
    write_store(out_path, images[keep], labels[keep], class_names, {"pool": str(pool_path), **summary},
                extra={"pool_index": keep.astype(np.int64),
                       **({"seeds": seeds[keep].astype(np.int64)} if seeds is not None else {}),
                       **{k: v[keep].astype(np.float64) for k, v in scores.items()}})
    write_json(summary_path, summary)
    print(f"[filter] {cfg.name}: kept {summary['kept']} of a pool of {summary['pool']}"
          + (f" (+{drawn} drawn)" if drawn else ""))
    return summary


def filter_selected(cfg: FilterConfig, pool_path, train, subset, choice_path, out_path, summary_path, *,
                    real, device: str, sampling=None, reference=None, pool_features=None) -> dict:
    """filter_pool on the pool of the selected snapshot (`choice_path`; None for an external set),
    against the real `subset` of the `train` store and its domain features (`real`: spaces.RealFeatures)."""
    from histosynth.checkpoint import selected_snapshot
    from histosynth.data.split import read_subset
    from histosynth.evaluation.features import load_pool_features, load_stats
    from histosynth.torch_utils import sampling_device

    real_images, real_labels, _ = read_store(train, read_subset(subset))
    snapshot = selected_snapshot(choice_path)[1] if choice_path else None
    return filter_pool(cfg, pool_path, real_images, real_labels, load_stats(real.stats)["features"], real.extractor,
                       real.backbone, snapshot, out_path, summary_path, device=sampling_device(device),
                       sampling=sampling, reference_path=reference,
                       pool_features=None if pool_features is None else load_pool_features(
                           pool_features, store_info(pool_path).n))
