"""The generator-family registry (histosynth.families): every registered family has its module,
its schema section, and traits that match what its module can do; nothing else lists them."""

import ast
from pathlib import Path

import pytest

from histosynth.config_schema import load_schema
from histosynth.families import FAMILIES, family_module
from histosynth.tables import generator_name

SRC = Path(__file__).resolve().parents[1] / "src/histosynth"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_module_has_what_the_pipeline_calls(name):
    module = family_module(name)
    assert callable(module.Trainer) and callable(module.load_generator)
    # The confidence filter and strategy `unified` use the critic of the families that say it classifies.
    assert hasattr(module, "load_critic") == FAMILIES[name].critic_classifies
    assert generator_name(name) == FAMILIES[name].display


def test_the_schema_has_a_section_for_every_family_and_no_other():
    sections = load_schema()["properties"]["generator"]["properties"]
    assert set(sections) == set(FAMILIES)
    assert set(p.stem for p in (SRC / "families").glob("*.py")) - {"__init__"} == set(FAMILIES)


def test_no_module_outside_the_family_modules_names_a_family():
    """A sixth family touches its module, the registry and the schema: no if-chain elsewhere."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.parent.name == "families" or path.name == "stages.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in FAMILIES and path.name != "registry.py":
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno} {node.value!r}")
    assert not offenders, offenders


def test_an_unknown_family_is_a_clear_error():
    from histosynth.errors import InputError

    with pytest.raises(InputError, match="'stylegan' is not one of"):
        family_module("stylegan")


def test_the_schema_enums_are_the_registries():
    from histosynth.registry import FILTER_ALIASES, FILTERS, STRATEGIES

    schema = load_schema()["properties"]
    assert schema["filters"]["items"]["enum"] == [*FILTERS, *FILTER_ALIASES]
    assert schema["strategies"]["items"]["enum"] == list(STRATEGIES)
    # Every setting a filter reads is a `filtering` setting.
    settings = set(schema["filtering"]["properties"])
    assert all(set(f.settings) <= settings for f in FILTERS.values())


def test_the_old_filter_name_still_runs_under_the_new_one():
    from histosynth.filtering import FilterConfig

    assert FilterConfig(name="histogan").name == "selective"
