"""A typo anywhere in the config stops `snakemake -n` with one line naming the dotted key."""

import pytest

from histosynth.config_schema import load_schema, validate_config
from histosynth.errors import InputError
from histosynth.generators import resolve_generators
from test_workflow import micro_config, snakemake

SCHEMA = load_schema()
FAMILY_SCHEMAS = SCHEMA["properties"]["generator"]["properties"]
HISTOGAN_KEYS = ", ".join(FAMILY_SCHEMAS["histogan"]["properties"]["model"]["properties"])


def error(config) -> str:
    with pytest.raises(ValueError) as e:
        validate_config(config)
    return str(e.value)


def test_validation_fills_in_every_default():
    config = {"generator": {"cgan": {"model": {"filters": 16}}}}
    validate_config(config)
    assert config["classifier"]["epochs"] == 100 and config["vae"]["model"]["channel_mults"] == [1, 2, 4]
    model = config["generator"]["cgan"]["model"]  # the user's key kept, the model's defaults beside it
    assert (model["filters"], model["latent_dim"], model["upsample"]) == (16, 1500, "resize")
    assert config["generator"]["histogan"]["model"]["z_dim"] == 128 and config["generator"]["histogan"]["lr"] == 1e-4


def test_an_unknown_key_is_one_line_naming_it_and_the_known_ones():
    assert error({"generator": {"histogan": {"model": {"z_dimm": 64}}}}) == (
        f"config generator.histogan.model: unknown key 'z_dimm' (expected one of: {HISTOGAN_KEYS})")
    assert error({"classifier": {"epochz": 3, "lrr": 1}}).startswith(
        "config classifier: unknown keys 'epochz', 'lrr' (expected one of: backbone, ")
    assert error({"bogus_key": 1}).startswith("config: unknown key 'bogus_key' (expected one of: resources_dir, ")


def test_a_bad_value_is_one_line_naming_its_key():
    assert error({"classifier": {"lr": -1}}) == "config classifier.lr: -1 is less than or equal to the minimum of 0"
    assert error({"generator": {"vitgan": {"model": {"z_dim": 10}}}}) == (
        "config generator.vitgan.model.z_dim: 10 is not a multiple of 4")
    message = error({"generator": {"cgan": {"model": {"upsample": "pixelshuffle"}}}})
    assert message.startswith("config generator.cgan.model.upsample: 'pixelshuffle' is not one of ")
    assert "\n" not in message


def test_a_variant_is_checked_against_its_familys_model_block():
    config = {"generator": {"vitgan_sa": {"family": "vitgan", "model": {"selectiv": False}}}}
    validate_config(config)  # a variant's keys are its family's: resolve_generators checks them
    with pytest.raises(InputError, match=r"^config generator.vitgan_sa.model: unknown key 'selectiv' \(expected "
                                         r"one of: z_dim, .*\); a variant of 'vitgan' takes that family's settings$"):
        resolve_generators(["vitgan_sa"], config["generator"], FAMILY_SCHEMAS)
    # ... even when `generators` does not list it yet.
    with pytest.raises(InputError, match="generator.vitgan_sa.model: unknown key 'selectiv'"):
        resolve_generators([], config["generator"], FAMILY_SCHEMAS)


@pytest.mark.parametrize("override,line", [
    ({"generators": ["histogan"], "generator": {"histogan": {"model": {"z_dimm": 64}}}},
     f"config generator.histogan.model: unknown key 'z_dimm' (expected one of: {HISTOGAN_KEYS})"),
    ({"generators": ["histogan_small"], "generator": {"histogan_small": {"family": "histogan",
                                                                         "model": {"z_dimm": 64}}}},
     f"config generator.histogan_small.model: unknown key 'z_dimm' (expected one of: {HISTOGAN_KEYS}); "
     "a variant of 'histogan' takes that family's settings"),
    ({"classifier": {"epochz": 3}},
     "config classifier: unknown key 'epochz' (expected one of: backbone, pretrained_weights, epochs, batch_size, "
     "lr, momentum, weight_decay, eval_batch_size, device, threads)"),
], ids=["family_model", "variant_model", "classifier"])
def test_a_typo_stops_the_dry_run_with_one_line(tmp_path, override, line):
    config = micro_config(tmp_path, {})
    config = {**config, **override, "classifier": {**config["classifier"], **override.get("classifier", {})}}
    proc = snakemake(tmp_path, config, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert line in out.splitlines(), out
    assert "Failed validating" not in out  # jsonschema's multi-line dump of schema and instance
    assert not (tmp_path / "results").exists()
