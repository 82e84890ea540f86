"""The filters and classifier strategies a config may name, registered once.

The rules (wildcards, which settings reach which job), the schema's enums (checked
by tests/test_families.py), the tables' names and the classifier's strategy checks
all derive from these two dicts. Generator families have their own registry,
histosynth.generative.families. Nothing here imports torch: the workflow reads it at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Filter:
    title: str  # its section of the tables, as the papers name it
    short: str  # its name in figure legends
    settings: tuple[str, ...] = ()  # the `filtering` settings it reads: changing another never reruns it
    draws: bool = False  # draws more images from the generator when short (so it reads the sampler settings)


_THRESHOLD = ("max_draw_factor",)
FILTERS = {
    "none": Filter("No image selection", "none"),
    # HistoGAN's selective augmentation: MC-dropout entropy, then distance to the real class centroid.
    "selective": Filter("HistoGAN selective augmentation", "selective", ("mc_dropout", "mc_passes", "seed")),
    "realism": Filter("Realism score image selection", "realism",
                      ("realism_k", "realism_threshold", *_THRESHOLD), draws=True),
    "realism_class": Filter("Class-based realism score image selection", "class realism",
                            ("realism_k", "realism_threshold", *_THRESHOLD), draws=True),
    "confidence": Filter("Classifier confidence selection", "confidence", ("confidence_threshold", *_THRESHOLD),
                         draws=True),
}
# Old names still accepted in a config (`filters:`), with a deprecation warning at start-up.
FILTER_ALIASES = {"histogan": "selective"}


def filter_name(name: str) -> str:
    """The registered name of a filter (an old alias resolved)."""
    return FILTER_ALIASES.get(name, name)


@dataclass(frozen=True)
class Strategy:
    label: str  # its name in tables: a row of its own (real data) or a suffix of the generator's row
    data: str  # "real": per (subset, seed); "synthetic": also per (generator, filter); "critic": per generator


STRATEGIES = {
    "baseline": Strategy("Baseline", "real"),
    "traditional": Strategy("Traditional augmentation", "real"),
    "augment": Strategy("augmentation", "synthetic"),
    "transfer": Strategy("transfer learning", "synthetic"),
    "synthetic_only": Strategy("synthetic only", "synthetic"),
    "unified": Strategy("class head", "critic"),  # the ViT-cGAN critic's class head classifies (Algorithm 1)
}


def strategies_on(data: str) -> tuple[str, ...]:
    """The strategies that train on `data` ("real", "synthetic" or "critic"), in registry order."""
    return tuple(name for name, s in STRATEGIES.items() if s.data == data)
