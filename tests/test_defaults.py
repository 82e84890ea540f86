"""One source of defaults: every config dataclass agrees with the schema, field by field.

The schema's defaults are what the pipeline runs (Snakemake fills them into the config);
a dataclass default that differs from them is what a test or a script runs instead.
"""

import dataclasses
from pathlib import Path

import pytest
import yaml

from histosynth.classification.classifier import ClassifierConfig
from histosynth.config_schema import load_schema, section_defaults, train_config, validate_config
from histosynth.data.augment import AugmentConfig
from histosynth.evaluation.filtering import FilterConfig
from histosynth.generative.ldm import DiffusionTrainConfig, SamplingConfig
from histosynth.generative.models.cgan import CGANConfig
from histosynth.generative.models.dit import DiTConfig
from histosynth.generative.models.histogan import HistoGANConfig
from histosynth.generative.models.unet import UNetConfig
from histosynth.generative.models.vae import VAEConfig
from histosynth.generative.models.vitgan import ViTGANConfig
from histosynth.generative.training import GANTrainConfig
from histosynth.generative.vae_training import VAETrainConfig
from histosynth.generators import FAMILIES, resolve_generators

REPO = Path(__file__).resolve().parents[1]
SCHEMA = load_schema()
LDM = ("ldm_unet", "ldm_dit")
MODELS = {"histogan": HistoGANConfig, "cgan": CGANConfig, "vitgan": ViTGANConfig, "ldm_unet": UNetConfig,
          "ldm_dit": DiTConfig}

# Every dataclass a config section feeds, and that section (how common.smk and the stages build them).
FED = [
    (ClassifierConfig, ("classifier",)),
    (AugmentConfig, ("augmentation",)),
    (VAETrainConfig, ("vae",)),
    (VAEConfig, ("vae", "model")),
    (FilterConfig, ("filtering",)),
    *[(GANTrainConfig, ("generator", f)) for f in FAMILIES],
    *[(MODELS[f], ("generator", f, "model")) for f in FAMILIES],
    *[(DiffusionTrainConfig, ("generator", f, "diffusion")) for f in LDM],
    *[(SamplingConfig, ("generator", f, "sampling")) for f in LDM],
]
# Dataclass fields the config reaches under another name.
RENAMED = [
    (FilterConfig, "ratio", ("generation", "ratio"), None),
    # CGANConfig keeps the paper's optimiser with the model; training reads generator.cgan's.
    (CGANConfig, "lr", ("generator", "cgan", "lr"), None),
    (CGANConfig, "beta1", ("generator", "cgan", "betas"), 0),
    (CGANConfig, "beta2", ("generator", "cgan", "betas"), 1),
    (CGANConfig, "batch_size", ("generator", "cgan", "batch_size"), None),
]
# Model fields the pipeline sets itself (from the data and the VAE) or that RGB fixes.
FILLED_IN = {"num_classes", "image_size", "in_channels", "input_size", "channels"}
# Section keys that are a job's resources (or the sampler), never a training setting.
RESOURCES = {"threads", "gpus", "sampling"}


def dataclass_defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def plain(value):
    """YAML's form of a value: tuples are lists."""
    return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def schema_node(path):
    node = SCHEMA
    for key in path:
        node = node["properties"][key]
    return node


def name(cls, path):
    return f"{cls.__name__}-{'.'.join(path)}"


@pytest.mark.parametrize("cls,path", FED, ids=[name(*p) for p in FED])
def test_every_dataclass_default_is_the_schemas(cls, path):
    schema = section_defaults(*path, schema=SCHEMA)
    wrong = [f"{cls.__name__}.{field} = {plain(value)!r} but the schema's {'.'.join(path)}.{field} = "
             f"{schema[field]!r}"
             for field, value in dataclass_defaults(cls).items()
             # A `{}` default is a sub-block (model, diffusion): its own dataclass is compared below.
             if field in schema and value != {} and plain(value) != schema[field]]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("cls,field,path,index", RENAMED, ids=[f"{c.__name__}.{f}" for c, f, _, _ in RENAMED])
def test_renamed_fields_agree_with_the_schema(cls, field, path, index):
    schema = section_defaults(*path[:-1], schema=SCHEMA)[path[-1]]
    schema = schema if index is None else schema[index]
    ours = dataclass_defaults(cls)[field]
    assert ours == schema, f"{cls.__name__}.{field} = {ours!r} but the schema's {'.'.join(path)} = {schema!r}"


@pytest.mark.parametrize("family", FAMILIES)
def test_a_model_block_lists_every_field_a_user_may_set(family):
    cls = MODELS[family]
    fields = {f.name for f in dataclasses.fields(cls)} - FILLED_IN
    if cls is CGANConfig:
        fields -= {"lr", "beta1", "beta2", "batch_size"}  # the loop trains with generator.cgan's
    block = schema_node(("generator", family, "model"))
    assert block["additionalProperties"] is False
    assert set(block["properties"]) == fields


def test_the_vae_model_block_lists_every_field_a_user_may_set():
    block = schema_node(("vae", "model"))
    assert block["additionalProperties"] is False
    assert set(block["properties"]) == {f.name for f in dataclasses.fields(VAEConfig)} - FILLED_IN


@pytest.mark.parametrize("cls,path", [(ClassifierConfig, ("classifier",)), (VAETrainConfig, ("vae",)),
                                      (FilterConfig, ("filtering",)),
                                      *[(GANTrainConfig, ("generator", f)) for f in FAMILIES]])
def test_every_training_setting_is_a_dataclass_field(cls, path):
    """What the rules pass on (a section without its resources) builds the dataclass."""
    keys = set(schema_node(path)["properties"]) - RESOURCES
    assert keys <= {f.name for f in dataclasses.fields(cls)}, keys - {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("family", FAMILIES)
def test_train_config_is_the_familys_schema_section(family):
    section = section_defaults("generator", family, schema=SCHEMA)
    cfg = train_config(family, epochs=3)
    assert cfg.family == family and cfg.epochs == 3
    for field in ("batch_size", "lr", "betas", "save_from", "save_every", "model"):
        assert plain(getattr(cfg, field)) == section[field], field
    with pytest.raises(TypeError):
        train_config(family, epochz=3)  # a typo in an override is an error, not a silent default


def test_families_that_disagree_leave_no_dataclass_default():
    """Each family trains with its own section's settings, never with another family's."""
    required = {f.name for f in dataclasses.fields(GANTrainConfig)} - set(dataclass_defaults(GANTrainConfig))
    assert {"lr", "betas", "epochs", "batch_size", "save_from", "save_every"} <= required
    with pytest.raises(TypeError):
        GANTrainConfig(family="histogan", epochs=3)


def merged(*files) -> dict:
    from snakemake.utils import update_config

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for f in files:
        update_config(config, yaml.safe_load((REPO / f).read_text()))
    return config


@pytest.mark.parametrize("files", [(), ("config.demo.yaml",), ("config.ablation.yaml",),
                                   ("config.demo.yaml", "config.convergence.yaml")], ids=str)
def test_shipped_configs_are_valid(files):
    config = merged(*files)
    validate_config(config)
    generators = resolve_generators(config["generators"], config["generator"],
                                    SCHEMA["properties"]["generator"]["properties"])
    # Every model block builds its model config at the config's image size.
    size = config["dataset"]["image_size"] or 96
    vae = VAEConfig(**{**config["vae"]["model"], "image_size": size})
    for settings in generators.values():
        fixed = {"num_classes": 2}
        fixed |= ({"in_channels": vae.latent_channels, "input_size": size // vae.downsample}
                  if settings["family"] in LDM else {"image_size": size})
        MODELS[settings["family"]](**{**settings["model"], **fixed})


@pytest.mark.parametrize("configfile", ["config.demo.yaml", "config.convergence.yaml"])
def test_the_small_configs_keep_the_vitgan_critic_at_the_papers_width(configfile):
    """A 64-wide critic (0.18 M parameters against the generator's 13.6 M) let the ViT-cGAN draw
    one image per class for every z on the demo tissue; at the paper's 384 it reached 1.4x the
    real-vs-real FID with recall 0.60 at the same cost per step (docs/benchmarks.md)."""
    model = yaml.safe_load((REPO / configfile).read_text())["generator"]["vitgan"]["model"]
    assert model.get("d_embed_dim", ViTGANConfig.d_embed_dim) >= ViTGANConfig.d_embed_dim == 384
