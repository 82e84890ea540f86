"""Generator families, one module each, loaded by name (family_module).

A family is two files here and nothing else: `<name>.py`, everything that is that
family's own code (`Trainer`: its models, optimisers and one training step, for
histosynth.generative.training's loop; `load_generator(state, device, sampling)`: a
snapshot's sampler; and, when its critic classifies images, `critic_from_state(state,
device)`, the critic, and `load_critic(state, device)`, it as a classifier), and
`<name>.yaml`, its registration (display name, order, traits) and the schema of its
config section `generator.<name>`, which config_schema.load_schema puts into the config
schema. Nothing else names a family, so code provenance counts its
module only for its own jobs. This module imports nothing heavy: the workflow reads it at
start-up.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from pathlib import Path

import yaml

from histosynth.errors import InputError


@dataclass(frozen=True)
class Family:
    """A generator family's registration; its code is the module histosynth.generative.families.<name>."""

    display: str  # its name in tables, figures and the report
    latent: bool = False  # trains in the latent space of the subset's VAE (rule train_vae)
    critic_classifies: bool = False  # its critic's class head is a classifier: filter confidence, strategy unified


def _registrations() -> dict[str, dict]:
    """{family: its <family>.yaml}, in their `order`: every family module's registration."""
    specs = {}
    for path in Path(__file__).parent.glob("*.yaml"):
        spec = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml: faster
        missing = {"display", "order", "settings"} - set(spec or {})
        if missing:
            raise InputError(f"{path}: a family registration needs {sorted(missing)}")
        if not (path.with_suffix(".py")).is_file():
            raise InputError(f"{path}: no family module {path.with_suffix('.py').name} beside it")
        specs[path.stem] = spec
    return dict(sorted(specs.items(), key=lambda kv: kv[1]["order"]))


_SPECS = _registrations()
# The registry: a family is its module and its <family>.yaml here; the rules, tables, the
# config schema and code provenance derive the rest.
FAMILIES = {name: Family(spec["display"], bool(spec.get("latent", False)), bool(spec.get("critic_classifies", False)))
            for name, spec in _SPECS.items()}


def family_schema(name: str) -> dict:
    """The JSON schema of a family's config section `generator.<name>` (with its defaults)."""
    return copy.deepcopy(_SPECS[name]["settings"])


def family_module(name: str):
    """The module holding a family's code (Trainer, load_generator, load_critic)."""
    if name not in FAMILIES:
        raise InputError(f"generator family '{name}' is not one of {list(FAMILIES)}")
    return importlib.import_module(f"histosynth.generative.families.{name}")


def family_modules() -> dict[str, tuple[str, ...]]:
    """{family: its own modules}: what code provenance counts only for that family's jobs."""
    return {name: (f"histosynth.generative.families.{name}",) for name in FAMILIES}
