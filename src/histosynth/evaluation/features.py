"""Feature extractors and Gaussian statistics for FID/KID.

Two extractors:
  * domain: the penultimate layer of a classifier trained on the same real subset
    (HistoGAN scores its checkpoints with a ResNet34 trained on the real data:
    ImageNet/Inception features say little about H&E texture), each vector scaled
    to root-mean-square 1 (UnitRMS);
  * inception: pytorch-fid's FID InceptionV3 (pool3, 2048-D), for numbers
    comparable with the literature, only when its weights file is present locally
    (`pt_inception-2015-12-05-6726825d.pth`): nothing is downloaded at run time.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from histosynth.classification.classifier import build_classifier
from histosynth.data.batches import BatchIterator
from histosynth.errors import InputError
from histosynth.fileio import atomic_path

INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"


class UnitRMS(nn.Module):
    """Each feature vector scaled to norm sqrt(D), i.e. root-mean-square 1 per dimension.

    The domain classifier's pooled ReLU features are heavy-tailed (on the demo some
    images' norms are 10x the median), which puts the cubic KID kernel
    (x.y / D + 1)^3 far from its intended range: KID x 10^3 read 10^4-10^7, negative
    for real vs real. With norm sqrt(D), x.y / D is the cosine similarity (in [0, 1]
    for non-negative features), the kernel stays in [1, 8] and FID, KID and the k-NN
    metrics read in the ranges known from Inception features. A per-image map: the same
    for every row, subset and run. A zero vector (a flat image may give one) stays zero.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        f = self.net(x).float()
        return f * (f.shape[1] ** 0.5 / f.norm(dim=1, keepdim=True).clamp(min=1e-12))


def domain_extractor(model_path, backbone: str, n_classes: int) -> nn.Module:
    """A trained classifier (`model.pt` state dict) with its head removed: images in [0,1] -> features
    of root-mean-square 1 (UnitRMS)."""
    model = build_classifier(backbone, n_classes)
    try:
        model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    except Exception as e:
        raise InputError(f"{model_path}: not a {backbone} classifier state dict with {n_classes} classes ({e})") from e
    net = model.backbone
    if hasattr(net, "fc"):
        net.fc = nn.Identity()
    else:
        net.classifier = nn.Identity()
    return UnitRMS(model).eval()


def inception_extractor(weights_path) -> nn.Module | None:
    """pytorch-fid's InceptionV3 (pool3) from a local weights file; None when the file is absent."""
    if not weights_path or not Path(weights_path).is_file():
        return None
    import pytorch_fid.inception as fid_inception

    def local_weights(url, progress=True):  # pytorch-fid would download them from GitHub
        return torch.load(weights_path, map_location="cpu", weights_only=True)

    try:
        with mock.patch.object(fid_inception, "load_state_dict_from_url", local_weights):
            model = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    except Exception as e:
        raise InputError(f"{weights_path}: not pytorch-fid's {INCEPTION_WEIGHTS} ({e})") from e
    return _Pool3(model).eval()


class _Pool3(nn.Module):
    """InceptionV3 returns a list of (B, 2048, 1, 1) maps; we want (B, 2048)."""

    def __init__(self, inception: nn.Module):
        super().__init__()
        self.inception = inception

    def forward(self, x):
        return self.inception(x)[0].flatten(1)


@torch.no_grad()
def extract_features(extractor: nn.Module, images: np.ndarray, batch_size: int = 256,
                     device: torch.device | str = "cpu") -> np.ndarray:
    """(N, D) float64 features of uint8 NHWC images."""
    device = torch.device(device)
    extractor = extractor.to(device).eval()
    batches = BatchIterator(images, np.zeros(len(images), np.int64), batch_size, shuffle=False,
                            augment=None, seed=0, device=device)
    out = [extractor(x).float().cpu() for x, _ in tqdm(batches, desc="features", leave=False, mininterval=5)]
    return torch.cat(out).numpy().astype(np.float64)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (N-1)-normalised covariance, as pytorch-fid computes them."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise InputError(f"need (N >= 2, D) features for statistics, got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def save_stats(path, features: np.ndarray) -> None:
    """Cache real-data statistics (and the features, for KID) once per subset."""
    mu, sigma = gaussian_stats(features)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, mu=mu, sigma=sigma, features=features.astype(np.float32))


def write_pool_features(pool, extractor, backbone: str, out, *, batch_size: int, device: str) -> None:
    """The domain features of every pool image (rule pool_features; `extractor` the subset's domain
    classifier), extracted once for the stages that measure the pool and its kept sets."""
    from histosynth.data.store import read_store
    from histosynth.torch_utils import sampling_device

    images, _, class_names = read_store(pool)
    features = extract_features(domain_extractor(extractor, backbone, len(class_names)), images, batch_size,
                                sampling_device(device))
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, domain=features.astype(np.float32))


def load_pool_features(path, n_images: int) -> np.ndarray:
    """(n_images, D) float64 domain features of a pool (write_pool_features); an error if they do not fit it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            features = z["domain"].astype(np.float64)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}: not a pool-features file ({e}); rerun pool_features") from e
    if len(features) != n_images:
        raise InputError(f"{path}: features of {len(features)} images for a pool of {n_images}; rerun pool_features")
    return features


def load_stats(path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in ("mu", "sigma", "features")}
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}: not a feature-statistics file ({e}); rerun the stage that wrote it") from e


def train_domain_extractor(train, subset, valid, test, *, metrics, history, model, stats, resume, cfg) -> None:
    """The domain classifier that scores every generator (the classifier recipe with traditional
    augmentation, seed 0, `cfg` a ClassifierConfig), and the real subset's statistics in its space."""
    from histosynth.classification.classifier import train_classifier
    from histosynth.data.split import read_subset
    from histosynth.data.store import read_store

    result = train_classifier(train, subset, valid, test, metrics_path=metrics, history_path=history,
                              model_path=model, resume_path=resume, strategy="traditional", seed=0, cfg=cfg)
    images, _, _ = read_store(train, read_subset(subset))
    extractor = domain_extractor(model, cfg.backbone, len(result["class_names"]))
    save_stats(stats, extract_features(extractor, images, cfg.eval_batch_size, result["device"]))


def write_inception_stats(train, subset, weights, out, *, batch_size: int, device: str) -> None:
    """pytorch-fid Inception statistics of the real subset, for standard FID."""
    from histosynth.data.split import read_subset
    from histosynth.data.store import read_store
    from histosynth.torch_utils import pick_device

    images, _, _ = read_store(train, read_subset(subset))
    save_stats(out, extract_features(inception_extractor(weights), images, batch_size, pick_device(device)))
