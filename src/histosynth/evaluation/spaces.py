"""The feature spaces a measuring stage compares real and synthetic images in.

  * ``domain``: the subset's own classifier (histosynth.evaluation.features), always;
  * ``inception``: pytorch-fid's InceptionV3, when its weights file is in place;
  * any encoder a lab has exported once to a TorchScript file (UNI, Phikon, CTransPath,
    DINOv2, ...), named in `quality.encoders` with its input size and normalisation. Its
    features are scaled to root-mean-square 1 like the domain features (UnitRMS), so its
    FID and KID read in the same ranges. The pipeline never downloads weights.

A module of its own so that the domain extractor's training (rule feature_extractor) does
not count the encoder code (histosynth.provenance hashes whole modules).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from histosynth.config_schema import check_encoder_file
from histosynth.errors import InputError
from histosynth.evaluation.features import UnitRMS, domain_extractor, inception_extractor, load_stats

class ScriptedEncoder(nn.Module):
    """images in [0, 1] -> resized to image_size, normalised, encoded, flattened to (N, D)."""

    def __init__(self, module, image_size: int, mean, std):
        super().__init__()
        self.module, self.image_size = module, int(image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        out = self.module((x - self.mean) / self.std)
        if isinstance(out, (tuple, list)):  # some exports return (features, ...)
            out = out[0]
        return out.flatten(1)


def encoder_extractor(name: str, path, image_size: int, mean, std) -> nn.Module:
    """A TorchScript encoder from a local file, as a feature extractor (UnitRMS-scaled)."""
    check_encoder_file(name, path)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise InputError(f"quality.encoders.{name}.path: {path} does not load as TorchScript ({e})") from e
    return UnitRMS(ScriptedEncoder(module, image_size, mean, std)).eval()


@dataclass(frozen=True)
class Encoder:
    """One `quality.encoders` entry and the real subset's statistics in its space (rule encoder_stats)."""

    name: str
    path: str
    image_size: int
    mean: tuple
    std: tuple
    stats: str | None = None

    def extractor(self) -> nn.Module:
        return encoder_extractor(self.name, self.path, self.image_size, self.mean, self.std)


def encoders_from(settings, stats_paths=None) -> tuple[Encoder, ...]:
    """The Encoder of every `quality.encoders` entry; `stats_paths`: {name: its statistics file}."""
    return tuple(Encoder(name, str(s["path"]), int(s["image_size"]), tuple(s["mean"]), tuple(s["std"]),
                         (stats_paths or {}).get(name)) for name, s in (settings or {}).items())


@dataclass(frozen=True)
class RealFeatures:
    """The files a measuring stage reads the real subset's feature spaces from: the domain
    extractor and its statistics, pytorch-fid's Inception when both of its files are given,
    and the configured encoders with their statistics."""

    extractor: str
    stats: str
    backbone: str
    inception_weights: str | None = None
    inception_stats: str | None = None
    encoders: tuple = ()

    def spaces(self, n_classes: int) -> dict[str, tuple[nn.Module, dict[str, np.ndarray]]]:
        """{space: (extractor, real statistics)}, "domain" first, then Inception, then the encoders."""
        spaces = {"domain": (domain_extractor(self.extractor, self.backbone, n_classes), load_stats(self.stats))}
        if self.inception_weights and self.inception_stats:
            spaces["inception"] = (inception_extractor(self.inception_weights), load_stats(self.inception_stats))
        for enc in self.encoders:
            spaces[enc.name] = (enc.extractor(), load_stats(enc.stats))
        return spaces


def write_encoder_stats(train, subset, encoder: Encoder, out, *, batch_size: int, device: str) -> None:
    """The real subset's statistics in an encoder's space (rule encoder_stats)."""
    from histosynth.data.split import read_subset
    from histosynth.data.store import read_store
    from histosynth.evaluation.features import extract_features, save_stats
    from histosynth.torch_utils import pick_device

    images, _, _ = read_store(train, read_subset(subset))
    save_stats(out, extract_features(encoder.extractor(), images, batch_size, pick_device(device)))
