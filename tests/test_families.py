"""The generator-family registry (histosynth.generative.families): every registered family has its module,
its schema section, and traits that match what its module can do; nothing else lists them."""

import ast
from pathlib import Path

import pytest

from histosynth.config_schema import load_schema
from histosynth.generative.families import FAMILIES, family_module
from histosynth.reporting.tables import generator_name

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
    assert list(sections) == list(FAMILIES) == ["histogan", "cgan", "ldm_unet", "ldm_dit", "vitgan"]
    assert set(p.stem for p in (SRC / "generative/families").glob("*.py")) - {"__init__"} == set(FAMILIES)


def test_no_module_outside_the_family_modules_names_a_family():
    """A sixth family is its module and its registration: no if-chain elsewhere."""
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
    from histosynth.evaluation.filtering import FilterConfig

    assert FilterConfig(name="histogan").name == "selective"


TOY = '''"""A toy family for the registry test: the cGAN's code under another name."""

from histosynth.generative.families.cgan import Trainer, load_generator  # noqa: F401
'''


@pytest.mark.slow
def test_a_new_family_is_two_files_of_its_own(tmp_path):
    """Added to a copy of the workflow as its module and its registration, nothing else edited,
    a sixth family runs its whole branch (dry run): schema, rules, tables derive from them."""
    import shutil

    import yaml

    from test_workflow import REPO as ROOT
    from test_workflow import micro_config, scheduled_jobs, snakemake

    repo = tmp_path / "repo"
    for name in ("workflow", "src"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, repo / name)
    families = repo / "src/histosynth/generative/families"
    (families / "toy.py").write_text(TOY)
    cgan = yaml.safe_load((families / "cgan.yaml").read_text())
    (families / "toy.yaml").write_text(yaml.safe_dump({**cgan, "display": "Toy GAN", "order": 6}))

    config = {**micro_config(tmp_path, {}), "generators": ["toy"], "filters": ["none"],
              "strategies": ["baseline", "synthetic_only"],
              "generator": {"toy": {"model": {"latent_dim": 8, "filters": 8, "d_filters": 8, "num_up": 3},
                                    "epochs": 2, "save_from": 0, "device": "cpu", "threads": 1}}}
    jobs = scheduled_jobs(snakemake(tmp_path, config, "-n", repo=repo))
    assert jobs == {"download": 1, "prepare": 1, "split": 1, "feature_extractor": 1, "reference_quality": 1,
                    "train_generator": 1, "select_checkpoint": 1, "generate": 1,
                    "pool_features": 1, "convergence": 1, "filter": 1, "quality": 1, "quality_table": 1,
                    "train_classifier": 2, "train_classifier_synthetic": 2, "aggregate": 1, "plot_synthetic_only_auc": 1}
    # A typo in its model block is caught at start-up like any family's.
    typo = {**config, "generator": {"toy": {"model": {"latent_dimm": 8}}}}
    proc = snakemake(tmp_path, typo, "-n", repo=repo, check=False)
    assert proc.returncode != 0
    assert "config generator.toy.model: unknown key 'latent_dimm'" in proc.stdout + proc.stderr
