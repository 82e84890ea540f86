"""Generator names in the config: a family's own section, or a named variant of a family.

`generators: [vitgan, vitgan_cp]` with ``generator: {vitgan_cp: {family: vitgan,
model: {selective: false}}}`` trains the ViT-cGAN twice: once with its own section,
once with that section's settings and the variant's keys merged over them (nested
dicts key by key). An ablation (vit-cgan-unified-framework.md Table II) is a list of
such variants; each gets its own branch of the DAG under its own name.

`generator: {dit_pub: {family: external, path: ...}}` is no family: it names synthetic
images made elsewhere (histosynth.data.external), imported per subset instead of trained,
its settings checked against the config schema's `definitions.external`.
"""

from __future__ import annotations

import copy

import jsonschema

from histosynth.config_schema import error_line
from histosynth.errors import InputError
from histosynth.generative.families import FAMILIES

EXTERNAL = "external"  # the `family` of a synthetic set made elsewhere


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def family_of(name: str, sections: dict) -> str:
    """The family a generator name trains: itself, or its section's `family`."""
    if name in FAMILIES:
        return name
    family = sections.get(name, {}).get("family")
    if family is None:
        raise InputError(f"config generators: '{name}' is not a generator family ({', '.join(FAMILIES)}) and "
                         f"generator.{name} names none: add `generator: {{{name}: {{family: <one of those>}}}}`")
    return family


def resolve_generators(names, sections: dict, family_schemas: dict) -> dict[str, dict]:
    """Full settings of every generator in `names`: {name: settings with a `family` key}.

    `sections` is the config's `generator` mapping (families' sections with their
    schema defaults filled in); `family_schemas` the schema of each family's
    section (and of an external entry, under EXTERNAL: config_schema.generator_schemas),
    against which a merged variant is validated, so a typo in a variant fails at
    start-up like one in a family's section.
    """
    resolved = {}
    # Variants that `names` does not list are checked too: a typo in one fails now, not
    # when someone adds it to `generators` later.
    variants = [name for name in sections if name not in FAMILIES]
    for name in dict.fromkeys([*names, *variants]):
        family = family_of(name, sections)
        if family == EXTERNAL:
            resolved[name] = _external(name, sections[name], family_schemas[EXTERNAL])
            continue
        if name == family:
            resolved[name] = {**sections[family], "family": family}
            continue
        if family not in FAMILIES:
            raise InputError(f"config generator.{name}.family is '{family}', expected one of "
                             f"{[*FAMILIES, EXTERNAL]}")
        override = {k: v for k, v in sections[name].items() if k != "family"}
        merged = _merge(sections.get(family, {}), override)
        try:
            jsonschema.validate(merged, family_schemas[family])
        except jsonschema.ValidationError as e:
            raise InputError(f"{error_line(e, f'generator.{name}')}; a variant of '{family}' takes that "
                             "family's settings") from None
        resolved[name] = {**merged, "family": family}
    return {name: resolved[name] for name in names}


def _external(name: str, section: dict, schema: dict) -> dict:
    """An external entry, checked, with its defaults; class names as strings (YAML reads `0:` as 0)."""
    from histosynth.config_schema import defaults

    section = {**section, "classes": {str(k): v for k, v in (section.get("classes") or {}).items()}}
    try:
        jsonschema.validate(section, schema)
    except jsonschema.ValidationError as e:
        raise InputError(f"{error_line(e, f'generator.{name}')}; an external entry takes path, classes and "
                         "device") from None
    return {**defaults({**schema, "default": {}}), **section}
