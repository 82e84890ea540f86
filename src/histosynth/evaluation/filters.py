"""Synthetic-image filters: which images of a generated pool go into training.

A pool is uint8 NHWC images with int64 conditional labels (the class each image
was generated for). Every selection function takes the pool's labels, per-image
scores and `target_counts` (class -> number of images wanted; a mapping, or a
sequence indexed by class) and returns the selected pool indices, **sorted in
ascending pool order**, with exactly `target_counts[c]` indices of every class c
(fewer only where a threshold filter reports a shortfall).

Filters
-------
* ``none``: :func:`select_first`, the first ``target_counts[c]`` images of each class.
* ``selective`` (HistoGAN, histogan-selective-augmentation.md §3.2, Algorithm 1,
  eqs. 6-7, §4.2.2): :class:`MCDropoutResNet`, :func:`class_centroids`,
  :func:`mc_dropout_scores`, :func:`histogan_select`.
* ``realism`` / ``realism_class`` (latent-diffusion-pcam-realism.md §3.3, eq. 11):
  :func:`realism_select` on scores from ``metrics.realism_score`` over all real
  images, or class by class with :func:`per_class_realism`.
* ``confidence`` (vit-cgan-unified-framework.md, Algorithm 2): :func:`confidence_select`.

Errors a user can cause (an empty class, a pool too small for the target, label
and score lengths that differ, NaN scores, a pool class with no target) raise
:class:`~histosynth.errors.InputError` naming the class and the numbers involved.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from tqdm import tqdm

from histosynth.classification.classifier import Classifier, build_classifier
from histosynth.data.batches import BatchIterator
from histosynth.errors import InputError

__all__ = [
    "select_first",
    "MCDropout",
    "MCDropoutResNet",
    "load_mc_dropout_model",
    "normalise_channels",
    "class_centroids",
    "mc_dropout_scores",
    "histogan_select",
    "realism_select",
    "per_class_realism",
    "confidence_select",
]


# --------------------------------------------------------------------------- checks


def _targets(target_counts) -> dict[int, int]:
    """{class: count} from a mapping or a sequence indexed by class; counts are ints >= 0."""
    if isinstance(target_counts, Mapping):
        items = list(target_counts.items())
    elif isinstance(target_counts, (Sequence, np.ndarray)) and not isinstance(target_counts, (str, bytes)):
        items = list(enumerate(np.asarray(target_counts).tolist()))
    else:
        raise InputError(f"target_counts must map class -> count, got {type(target_counts).__name__}")
    out = {}
    for c, n in items:
        try:
            bad = isinstance(n, (bool, np.bool_)) or not float(n).is_integer() or n < 0
        except (TypeError, ValueError):
            bad = True
        if bad:
            raise InputError(f"target count of class {c} must be an integer >= 0, got {n!r}")
        out[int(c)] = int(n)
    return out


def _labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise InputError(f"labels must be 1-D, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be integers, got dtype {labels.dtype}")
    return labels.astype(np.int64)


def _scores(name: str, scores, n: int, *, allow_inf: bool = False) -> np.ndarray:
    """A (n,) float64 score array without NaN (and without +-inf unless allowed)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (n,):
        raise InputError(f"{name} has shape {scores.shape} but there are {n} labels: "
                         f"one score per pool image is needed")
    bad = np.isnan(scores) if allow_inf else ~np.isfinite(scores)
    if bad.any():
        where = np.flatnonzero(bad)
        raise InputError(f"{name} has {len(where)} {'NaN' if allow_inf else 'non-finite'} "
                         f"value(s), first at pool indices {where[:10].tolist()}")
    return scores


def _class_pools(labels: np.ndarray, targets: dict[int, int], minimum: Callable[[int], int] | None = None,
                 what: str = "") -> dict[int, np.ndarray]:
    """Pool indices of each target class, in pool order; checks every class can meet its target.

    `minimum(target)` is the pool size a class needs (default: the target itself).
    """
    extra = sorted(set(np.unique(labels).tolist()) - set(targets))
    if extra:
        raise InputError(f"the pool holds classes {extra} that target_counts {targets} does not "
                         f"mention (give them a count, 0 to select none)")
    pools = {}
    for c, n in sorted(targets.items()):
        idx = np.flatnonzero(labels == c)
        need = minimum(n) if minimum else n
        if n > 0 and len(idx) == 0:
            raise InputError(f"class {c}: the pool has no images of this class but {n} are wanted")
        if len(idx) < need:
            raise InputError(f"class {c}: the pool has {len(idx)} images but {need} are needed to "
                             f"select {n}{what}")
        pools[c] = idx
    return pools


def _sorted(chosen: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros(0, np.int64)


# --------------------------------------------------------------------------- none


def select_first(labels, target_counts) -> np.ndarray:
    """Filter `none`: the first ``target_counts[c]`` pool images of each class c (ascending indices)."""
    labels, targets = _labels(labels), _targets(target_counts)
    pools = _class_pools(labels, targets)
    return _sorted([pools[c][:n] for c, n in targets.items()])


# --------------------------------------------------------------------------- threshold filters


def _threshold_select(labels: np.ndarray, passed: np.ndarray, targets: dict[int, int]
                      ) -> tuple[np.ndarray, dict[int, int]]:
    """Per class, the first target-many passing images in pool order, and the per-class shortfall."""
    pools = _class_pools(labels, targets, what=" (the pool before filtering must hold at least the target)")
    chosen, shortfall = [], {}
    for c, idx in pools.items():
        ok = idx[passed[idx]]
        chosen.append(ok[:targets[c]])
        shortfall[c] = max(targets[c] - len(ok), 0)
    return _sorted(chosen), shortfall


def realism_select(labels, realism, target_counts, threshold: float = 1.0
                   ) -> tuple[np.ndarray, dict[int, int]]:
    """Filters `realism`/`realism_class`: keep R >= threshold; per class the first target-many in pool order.

    Returns (ascending pool indices, {class: how many more passing images are
    needed}); the shortfall is 0 for a class whose target was met.

    The latent-diffusion paper (§3.3) discards images with R < 1 *while
    generating*: it is a pass/fail test applied in generation order, not a
    ranking. So the kept images are the first passing ones in pool order (the
    order the generator produced them), not the highest-R ones: ranking by R
    would favour images in dense regions of the real feature manifold (near-
    copies of real images) and cost diversity, which the paper does not do.
    R >= threshold is inclusive (the paper: "realistic if R >= 1"); R = +inf (a
    fake whose features coincide with a real image's) passes; NaN is an error.
    The caller generates more images for a class with a shortfall and calls
    again on the grown pool; a pool smaller than the target itself is an error.
    """
    labels = _labels(labels)
    realism = _scores("realism", realism, len(labels), allow_inf=True)
    return _threshold_select(labels, realism >= threshold, _targets(target_counts))


def confidence_select(labels, probs, target_counts, threshold: float = 0.6
                      ) -> tuple[np.ndarray, dict[int, int]]:
    """Filter `confidence` (ViT-cGAN Algorithm 2): keep p(conditional label) > threshold, strictly.

    `probs` is (N, C) class probabilities (column `labels[i]` is used for image
    i) or (N,) probabilities already taken at each image's own label. Per class
    the first target-many passing images in pool order (Algorithm 2 keeps or
    discards each generated image on its own, no ranking); returns (ascending
    pool indices, {class: shortfall}) as :func:`realism_select`. λ = 0.6 is the
    paper's best setting.
    """
    labels = _labels(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 2:
        if probs.shape[0] != len(labels):
            raise InputError(f"probs has {probs.shape[0]} rows but there are {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
            raise InputError(f"labels range over [{labels.min()}, {labels.max()}] but probs has "
                             f"{probs.shape[1]} class columns")
        probs = probs[np.arange(len(labels)), labels]
    elif probs.ndim != 1:
        raise InputError(f"probs must be (N, C) or (N,), got shape {probs.shape}")
    p = _scores("probs", probs, len(labels))
    return _threshold_select(labels, p > threshold, _targets(target_counts))


def per_class_realism(real_features, real_labels, fake_features, fake_labels,
                      score_fn: Callable[..., np.ndarray], **score_kwargs) -> np.ndarray:
    """Class-based realism (`realism_class`): ``score_fn`` applied class by class.

    For every class c of the fakes, ``score_fn(real_features[real_labels == c],
    fake_features[fake_labels == c], **score_kwargs)`` (e.g.
    ``metrics.realism_score`` with ``k=3``), so a fake is compared only with the
    real images of its own class. Returns float64 scores aligned with the fakes.
    """
    real_features, fake_features = np.asarray(real_features), np.asarray(fake_features)
    real_labels, fake_labels = _labels(real_labels), _labels(fake_labels)
    if real_features.ndim != 2 or fake_features.ndim != 2 or real_features.shape[1] != fake_features.shape[1]:
        raise InputError(f"features must be (N, D) with the same D, got real {real_features.shape} "
                         f"and fake {fake_features.shape}")
    if len(real_labels) != len(real_features):
        raise InputError(f"{len(real_features)} real feature rows but {len(real_labels)} real labels")
    if len(fake_labels) != len(fake_features):
        raise InputError(f"{len(fake_features)} fake feature rows but {len(fake_labels)} fake labels")
    scores = np.full(len(fake_labels), np.nan)
    for c in np.unique(fake_labels):
        real = real_labels == c
        if not real.any():
            raise InputError(f"class {c}: synthetic images but no real images to score them against")
        fake = fake_labels == c
        s = np.asarray(score_fn(real_features[real], fake_features[fake], **score_kwargs), np.float64)
        if s.shape != (int(fake.sum()),):
            raise ValueError(f"score_fn returned shape {s.shape} for {int(fake.sum())} fakes of class {c}")
        scores[fake] = s
    return scores


# --------------------------------------------------------------------------- HistoGAN selection


def histogan_select(labels, entropy, distance, target_counts) -> np.ndarray:
    """HistoGAN Algorithm 1: per class the lower-entropy half, then of those the closer half.

    For each class c with a pool of n images: rank by mean MC-dropout entropy
    (ascending) and keep the first ``n // 2``; rank those by mean feature distance
    to the class centroid (ascending) and keep the first ``n // 2 // 2``. The
    paper's pool is ``4 r N_c`` for a target of ``r N_c``, so this leaves exactly
    the target. With a larger pool, the halvings still follow the paper and the
    ``target`` survivors with the smallest distance are kept; with a pool whose
    two halvings leave fewer than the target (fewer than 4 x target images)
    InputError is raised.

    Algorithm 1 writes the halvings as ``e < Median(E^c)`` and
    ``d < Median(D^c)``; with distinct scores and an even count that keeps
    exactly the lower half, which is how §3.2 ("choose the first half") and
    §4.2.2 ("half images in each class are kept") state it. We implement the
    ranking form, so ties never shrink the selection: equal scores are ordered
    by pool index (earlier first). The distance median is taken over the images
    that survived the entropy step (§3.2: "all remaining samples ... the first
    half ... will be kept"), not over the whole class pool. Returns ascending
    pool indices.
    """
    labels = _labels(labels)
    entropy = _scores("entropy", entropy, len(labels))
    distance = _scores("distance", distance, len(labels))
    targets = _targets(target_counts)
    pools = _class_pools(labels, targets, minimum=lambda n: 4 * n,
                         what=(" (HistoGAN keeps the lower-entropy half, then the closer half of it: "
                               "the pool must hold 4 x the target)"))
    chosen = []
    for c, idx in pools.items():
        certain = idx[np.argsort(entropy[idx], kind="stable")[:len(idx) // 2]]
        certain = np.sort(certain)  # pool order, so distance ties go to the earlier image
        close = certain[np.argsort(distance[certain], kind="stable")[:len(certain) // 2]]
        chosen.append(close[:targets[c]])  # `close` is in ascending distance: best first
    return _sorted(chosen)


class MCDropout(nn.Module):
    """Element-wise dropout (as nn.Dropout) drawing its masks from `self.generator` when one is set.

    Active only in training mode; with a generator the masks repeat for a seed
    and the global torch RNG is left untouched.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p < 1:
            raise InputError(f"dropout rate must be in [0, 1), got {p}")
        self.p = float(p)
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, generator=self.generator, device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MCDropoutResNet(nn.Module):
    """A trained ResNet :class:`Classifier` with MC dropout before its last residual block.

    HistoGAN §4.2.2: "A dropout layer of rate 0.5 is inserted before the last
    residual block right above the fully-connected layer of the feature
    extractor": the dropout acts on the input of ``layer4[-1]`` (the last
    BasicBlock/Bottleneck). The classifier's weights are shared, not copied.

    Modes: ``.train()`` (the default after construction) is *MC mode*: the
    dropout samples masks, every BatchNorm (and everything else) stays in eval
    mode, so running statistics are never updated. ``.eval()`` turns the
    dropout off as well: the output is then the classifier's own.

    ``forward(x)`` takes images in [0, 1] (B, 3, H, W) and returns the softmax
    class probabilities (B, C) and the activations after every residual block
    (ResNet18: 8, ResNet34: 16, each (B, C_l, H_l, W_l)), unit-normalised over the
    channel dimension at each spatial position (``normalise=False``: raw). Blocks
    before the dropout do not depend on it; only the last block and the
    probabilities vary between MC passes.
    """

    def __init__(self, classifier: Classifier, p: float = 0.5):
        super().__init__()
        net = getattr(classifier, "backbone", None)
        if not isinstance(net, torchvision.models.ResNet):
            raise InputError(f"MC dropout needs a torchvision ResNet classifier, got "
                             f"{type(net if net is not None else classifier).__name__}")
        self.classifier = classifier
        self.dropout = MCDropout(p)
        self.train()

    def train(self, mode: bool = True):
        super().train(False)
        self.dropout.train(mode)
        return self

    @property
    def mc(self) -> bool:
        """Whether dropout is sampling (MC mode)."""
        return self.dropout.training

    def _blocks(self) -> list[nn.Module]:
        net = self.classifier.backbone
        return [b for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]

    def trunk(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Raw activations after every residual block but the last (they do not depend on dropout)."""
        c, net = self.classifier, self.classifier.backbone
        h = net.maxpool(net.relu(net.bn1(net.conv1((x - c.mean) / c.std))))
        out = []
        for block in self._blocks()[:-1]:
            h = block(h)
            out.append(h)
        return out

    def head(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, last block's raw activation) from the input of the last block: dropout applies here."""
        net = self.classifier.backbone
        last = self._blocks()[-1](self.dropout(h))
        return net.fc(torch.flatten(net.avgpool(last), 1)), last

    def forward(self, x: torch.Tensor, normalise: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
        blocks = self.trunk(x)
        logits, last = self.head(blocks[-1])
        blocks.append(last)
        if normalise:
            blocks = [normalise_channels(b) for b in blocks]
        return F.softmax(logits.float(), dim=1), blocks


def load_mc_dropout_model(model_path, backbone: str, n_classes: int, p: float = 0.5) -> MCDropoutResNet:
    """:class:`MCDropoutResNet` around a trained classifier's ``model.pt`` state dict (CPU, MC mode)."""
    model = build_classifier(backbone, n_classes)
    try:
        model.load_state_dict(torch.load(Path(model_path), map_location="cpu", weights_only=True))
    except Exception as e:
        raise InputError(f"{model_path}: not a {backbone} classifier state dict with {n_classes} classes ({e})") from e
    return MCDropoutResNet(model, p)


def normalise_channels(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit L2 norm over the channel dimension (dim 1) at every spatial position (as Xue et al./LPIPS)."""
    return f / (f.norm(dim=1, keepdim=True) + eps)


def _batches(images: np.ndarray, batch_size: int, device: torch.device) -> BatchIterator:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    return BatchIterator(images, np.zeros(len(images), np.int64), batch_size, shuffle=False,
                         augment=None, seed=0, device=device)


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


class _MCMode:
    """Puts the model in MC mode (or plain eval) with a seeded dropout generator; restores afterwards."""

    def __init__(self, model: MCDropoutResNet, mc: bool, generator: torch.Generator):
        self.model, self.mc, self.generator = model, mc, generator

    def __enter__(self):
        self.was, self.old = self.model.mc, self.model.dropout.generator
        self.model.train(self.mc)
        self.model.dropout.generator = self.generator

    def __exit__(self, *exc):
        self.model.train(self.was)
        self.model.dropout.generator = self.old


def _check_model(model) -> None:
    if not isinstance(model, MCDropoutResNet):
        raise InputError(f"expected an MCDropoutResNet, got {type(model).__name__}")


@torch.no_grad()
def class_centroids(model: MCDropoutResNet, images, labels, *, batch_size: int = 256,
                    device: torch.device | str = "cpu", seed: int = 0, mc: bool = True
                    ) -> dict[int, list[np.ndarray]]:
    """HistoGAN eq. 7: per class, the mean raw activation after every residual block.

    ``{class: [(C_l, H_l, W_l) float32 array for each block l]}`` from the real
    training images of each class. The means are of the raw activations φ_l (eq. 7
    has no hat); the distance (:func:`mc_dropout_scores`) unit-normalises them
    over channels. "c_i is retained by one time MC-sampling and fixed": one
    seeded pass with dropout active (``mc=False``: dropout off). Only the last
    block's centroid depends on the dropout.
    """
    _check_model(model)
    labels = _labels(labels)
    if len(labels) != len(images):
        raise InputError(f"{len(images)} real images but {len(labels)} labels")
    if len(labels) == 0:
        raise InputError("no real images to compute class centroids from")
    device = torch.device(device)
    model.to(device)
    batches = _batches(images, batch_size, device)
    classes = np.unique(labels)
    sums: list[torch.Tensor] | None = None
    y_all = torch.as_tensor(np.searchsorted(classes, labels), device=device)
    with _MCMode(model, mc, _generator(seed, device)):
        start = 0
        for x, _ in tqdm(batches, desc="class centroids", leave=False, mininterval=5):
            y = y_all[start:start + len(x)]
            start += len(x)
            onehot = F.one_hot(y, len(classes)).double()  # (B, K)
            _, blocks = model(x, normalise=False)
            if sums is None:
                sums = [torch.zeros((len(classes),) + b.shape[1:], dtype=torch.float64, device=device)
                        for b in blocks]
            for s, b in zip(sums, blocks):
                s += torch.einsum("bk,bchw->kchw", onehot, b.double())
    counts = torch.as_tensor(np.bincount(np.searchsorted(classes, labels)), dtype=torch.float64, device=device)
    means = [(s / counts.view(-1, 1, 1, 1)).float().cpu().numpy() for s in sums]
    return {int(c): [m[k] for m in means] for k, c in enumerate(classes)}


@torch.no_grad()
def mc_dropout_scores(model: MCDropoutResNet, images, labels, centroids: Mapping[int, Sequence[np.ndarray]], *,
                      passes: int = 5, batch_size: int = 256, device: torch.device | str = "cpu",
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """HistoGAN scores of a synthetic pool: (mean entropy, mean feature distance), float64 (N,) each.

    Over K = `passes` MC-dropout passes (paper: 5):
      * entropy: the mean over passes of each pass's prediction entropy
        ``-sum_c p_c log p_c`` (§4.2.2 "the mean of entropy across 5 runs"; not the
        entropy of the mean prediction);
      * distance, eq. 6: ``D_f(x, c_i) = 1/K sum_k sum_l 1/(H_l W_l)
        ||phi^_l^k(x) - phi^_l(c_i)||^2``, with phi^ the block-l activation unit-
        normalised over channels at each spatial position (so the inner term is
        the spatial mean of 2 - 2 cos between channel vectors: "an estimated
        cosine distance"), summed over all residual blocks l, to the centroid of
        the image's conditional label (`centroids` from :func:`class_centroids`,
        normalised the same way, fixed across passes).
    No spatial pooling: §4.2.2 says "feature vectors after each residual block",
    but eq. 6's 1/(H_l W_l) and "unit-normalized ... in the channel dimension"
    (following Xue et al. 2019, LPIPS-style) mean whole (C_l, H_l, W_l) maps
    compared position by position; layers are summed, not averaged (eq. 6), so
    with 96 px inputs all 16 ResNet34 blocks count equally whatever their size.
    Blocks before the dropout are computed once per batch and reused by every
    pass. Seeded: the same seed, batch size and device give the same scores.
    """
    _check_model(model)
    labels = _labels(labels)
    if len(labels) != len(images):
        raise InputError(f"{len(images)} synthetic images but {len(labels)} labels")
    if passes < 1:
        raise InputError(f"passes must be >= 1, got {passes}")
    missing = sorted(set(np.unique(labels).tolist()) - set(int(c) for c in centroids))
    if missing:
        raise InputError(f"no real-image centroid for classes {missing} (centroid classes: {sorted(centroids)})")
    device = torch.device(device)
    model.to(device)
    entropy = np.zeros(len(labels))
    distance = np.zeros(len(labels))
    if len(labels) == 0:
        return entropy, distance
    classes = sorted(int(c) for c in centroids)
    n_layers = {len(centroids[c]) for c in classes}
    if n_layers != {len(model._blocks())}:
        raise InputError(f"centroids have {sorted(n_layers)} layers but the model has "
                         f"{len(model._blocks())} residual blocks: not this model's centroids")
    # (K, C_l, H_l, W_l) per layer, unit-normalised over channels.
    cents = [normalise_channels(torch.as_tensor(np.stack([centroids[c][l] for c in classes]),
                                                dtype=torch.float32, device=device))
             for l in range(len(model._blocks()))]
    row = torch.as_tensor(np.searchsorted(classes, labels), device=device)

    def dist(f: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if f.shape[1:] != c.shape[1:]:
            raise InputError(f"activation shape {tuple(f.shape[1:])} differs from the centroid's "
                             f"{tuple(c.shape[1:])}: synthetic and real images must have the same size")
        return (normalise_channels(f) - c).pow(2).sum(1).mean((1, 2)).double()

    with _MCMode(model, True, _generator(seed, device)):
        start = 0
        for x, _ in tqdm(_batches(images, batch_size, device), desc=f"MC dropout x{passes}", leave=False,
                         mininterval=5):
            r = row[start:start + len(x)]
            trunk = model.trunk(x)
            fixed = sum(dist(f, c[r]) for f, c in zip(trunk, cents))  # dropout-free blocks
            ent = torch.zeros(len(x), dtype=torch.float64, device=device)
            dis = torch.zeros(len(x), dtype=torch.float64, device=device)
            for _ in range(passes):
                logits, last = model.head(trunk[-1])
                logp = F.log_softmax(logits.double(), dim=1)
                ent -= (logp.exp() * logp).sum(1)
                dis += fixed + dist(last, cents[-1][r])
            entropy[start:start + len(x)] = (ent / passes).cpu().numpy()
            distance[start:start + len(x)] = (dis / passes).cpu().numpy()
            start += len(x)
    return entropy, distance
