"""The config schema (workflow/schemas/config.schema.yaml, with each generator family's section
from generative/families/<family>.yaml): the one source of defaults.

`validate_config` is what the Snakefile runs at start-up: Snakemake's own validation,
which fills every default into the config, with its error cut down to one line that
names the key (`config generator.histogan.model: unknown key 'z_dimm' (expected one
of: ...)`). `section_defaults` gives a section as the pipeline runs it when the user
sets nothing, and `train_config` builds a generator family's GANTrainConfig from it,
so code outside the pipeline (tests, benchmarks) trains with the pipeline's settings.
tests/test_defaults.py checks every config dataclass's defaults against the schema.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import tempfile
import zipfile
from pathlib import Path

import jsonschema
import yaml

from histosynth.errors import InputError

# The package runs from its checkout (src layout, installed editable by the Makefile), beside the workflow.
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def load_schema(path=SCHEMA_PATH) -> dict:
    """The config schema, with every registered family's section (its <family>.yaml in
    histosynth/generative/families) under `generator`: a fresh copy, parsed once per process."""
    return copy.deepcopy(_parsed_schema(str(path)))


@functools.cache
def _parsed_schema(path: str) -> dict:
    # Every Snakemake start (a dry run, each cluster job) reads it several times: parse it once,
    # with libyaml's parser where PyYAML has it (~10x the pure-Python one).
    from histosynth.generative.families import FAMILIES, family_schema

    schema = yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schema["properties"]["generator"]["properties"] = {name: family_schema(name) for name in FAMILIES}
    return schema


def generator_schemas(schema: dict | None = None) -> dict[str, dict]:
    """{family: the schema of its section}, and of an external entry (generators.EXTERNAL):
    what generators.resolve_generators checks each generator entry against."""
    from histosynth.generators import EXTERNAL

    schema = schema if schema is not None else load_schema()
    return {**schema["properties"]["generator"]["properties"], EXTERNAL: schema["definitions"]["external"]}


def error_line(error: jsonschema.ValidationError, prefix: str = "") -> str:
    """`config <dotted.key>: <what is wrong>`, one line, for a schema error.

    `prefix` is where the validated instance sits in the config (e.g. `generator.vitgan_cp`).
    """
    where = ".".join([prefix] * bool(prefix) + [str(p) for p in error.absolute_path])
    if error.validator == "additionalProperties" and error.validator_value is False:
        known = list(error.schema.get("properties", {}))
        unknown = [key for key in error.instance if key not in known]
        message = (f"unknown key{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} "
                   f"(expected one of: {', '.join(known)})")
    else:
        message = " ".join(error.message.split())  # jsonschema's messages may hold a multi-line repr
    return f"config {where}: {message}" if where else f"config: {message}"


def validate_config(config: dict, schema_path=SCHEMA_PATH) -> None:
    """Check `config` against the schema and fill in its defaults, in place.

    Snakemake's `validate(..., set_default=True)`, so defaults land exactly as before;
    its error prints the whole schema fragment and instance, dozens of lines for one
    typo, so this raises ValueError with `error_line` instead.
    """
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    # Snakemake validates against a file: the schema with the families' sections put in.
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "config.schema.yaml"
        merged.write_text(yaml.safe_dump(load_schema(schema_path), sort_keys=False))
        try:
            validate(config, str(merged), set_default=True)
        except WorkflowError as e:
            cause = e.__context__  # Snakemake raises its WorkflowError while handling jsonschema's error
            if not isinstance(cause, jsonschema.ValidationError):
                raise
            raise ValueError(error_line(cause)) from None


def defaults(node: dict):
    """The value a schema node gives a missing key: its default, with its properties' defaults
    filled in (what Snakemake's set_default does to an absent section)."""
    value = copy.deepcopy(node.get("default"))
    if isinstance(value, dict):
        for key, sub in node.get("properties", {}).items():
            if "default" in sub:
                value.setdefault(key, defaults(sub))
    return value


def section_defaults(*keys: str, schema: dict | None = None):
    """Defaults of the section at `keys`, e.g. section_defaults("generator", "vitgan")."""
    node = schema if schema is not None else load_schema()
    for key in keys:
        node = node["properties"][key]
    return defaults(node)


def train_config(family: str, **overrides):
    """The GANTrainConfig a family trains with by default, `overrides` replacing whole keys:
    train_config("histogan", model=TINY, epochs=3, device="cpu")."""
    from histosynth.generative.training import GANTrainConfig

    names = {f.name for f in dataclasses.fields(GANTrainConfig)}
    # threads, gpus and sampling are the job's resources and the sampler, not training settings.
    settings = {k: v for k, v in section_defaults("generator", family).items() if k in names}
    return GANTrainConfig(**{**settings, "family": family, **overrides})


def check_encoder_file(name: str, path) -> None:
    """A clear error at start-up, without importing torch: `path` must be a TorchScript archive."""
    key = f"quality.encoders.{name}.path"
    if not Path(path).is_file():
        raise InputError(f"{key}: {path} does not exist (export the encoder once with torch.jit.script or "
                         "torch.jit.trace and .save(); nothing is downloaded)")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{key}: {path} is not a TorchScript file (torch.jit.save writes a zip archive)")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if not any(n.endswith("/data.pkl") for n in names) or not any("/code/" in n for n in names):
        raise InputError(f"{key}: {path} is a zip archive but not a TorchScript module (no code/ and data.pkl)")
