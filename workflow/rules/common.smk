# Paths and small helpers shared by the rules. Everything a rule needs from the
# config reaches it through `params`, so Snakemake's params rerun-trigger
# reruns exactly the jobs whose settings changed.
import os
import sys
from functools import cache
from pathlib import Path


# The workflow runs the package it ships with, installed or not (also inside a `--sdm conda`
# environment): here, and in every job's script, which inherits the environment.
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p))
from histosynth.data.download import expected_files  # noqa: E402
from histosynth.config_schema import check_encoder_file, generator_schemas, section_defaults  # noqa: E402
from histosynth.data import external  # noqa: E402
from histosynth.errors import InputError  # noqa: E402
from histosynth.generative.families import FAMILIES  # noqa: E402
from histosynth.registry import FILTER_ALIASES, FILTERS, STRATEGIES, filter_name  # noqa: E402
from histosynth.generators import EXTERNAL, resolve_generators  # noqa: E402
from histosynth.provenance import stage_code  # noqa: E402
from histosynth.data.prepare import dataset_classes, resolve_options  # noqa: E402

DATASET = config["dataset"]["name"]
RAW = f"{config['resources_dir']}/{DATASET}"
RESULTS = f"{config['results_dir']}/{DATASET}"
LOGS = f"{RESULTS}/logs"  # beside the results they explain: each results_dir keeps its own
SPLITS = ["train", "valid", "test"]

# dataset.options depends on the dataset, so the schema cannot list its keys:
# check them here, at start-up, rather than when `prepare` runs.
try:
    resolve_options(DATASET, config["dataset"]["options"])
except InputError as e:
    raise ValueError(f"config dataset.options: {e}") from None
# Inception FID only when the user has put pytorch-fid's weights file in place
# (it is never downloaded at run time); the domain FID is always computed.
INCEPTION = config["selection"]["inception_weights"]
if INCEPTION and not Path(INCEPTION).is_file():
    print(f"histosynth: selection.inception_weights {INCEPTION} not found: scoring checkpoints "
          "with the domain extractor only", file=sys.stderr)
    INCEPTION = None
if config["selection"]["metric"].endswith("_inception") and not INCEPTION:
    raise ValueError(f"config selection.metric is {config['selection']['metric']!r}, which needs "
                     "selection.inception_weights to name an existing file")
# A lab's own encoders (TorchScript files): every entry's file checked here, at start-up.
ENCODERS = config["quality"]["encoders"]
for _name, _enc in ENCODERS.items():
    _enc.setdefault("image_size", 224)
    _enc.setdefault("mean", [0.485, 0.456, 0.406])
    _enc.setdefault("std", [0.229, 0.224, 0.225])
    try:
        check_encoder_file(_name, _enc["path"])
    except InputError as e:
        raise ValueError(f"config {e}") from None
_space = config["selection"]["metric"].split("_", 1)[1] if "_" in config["selection"]["metric"] else "domain"
if _space not in ("domain", "inception", *ENCODERS):
    raise ValueError(f"config selection.metric is {config['selection']['metric']!r}: '{_space}' is neither "
                     f"inception nor an encoder of quality.encoders ({sorted(ENCODERS) or 'none configured'})")
# Old filter names (histosynth.registry.FILTER_ALIASES) still run, under their new names.
for _old in [f for f in config["filters"] if f in FILTER_ALIASES]:
    print(f"histosynth: filter '{_old}' is now called '{FILTER_ALIASES[_old]}' (results under "
          f"filters/{FILTER_ALIASES[_old]}/); the old name will stop working in a later release", file=sys.stderr)
config["filters"] = list(dict.fromkeys(filter_name(f) for f in config["filters"]))
SUBSETS = list(range(config["subsets"]["k"]))
SEEDS = list(range(config["seeds"]))
# Every generator's full settings, named variants (`generator.<name>.family`) merged over
# their family's section and checked against its schema; rules read them from here.
try:
    GENERATORS = resolve_generators(config["generators"], config["generator"], generator_schemas())
except InputError as e:
    raise ValueError(str(e)) from None
# Synthetic sets made elsewhere (`family: external`) are imported (rule import_external), the
# others trained; each set is checked now, per subset, so a missing folder or class fails
# before any job runs.
EXTERNAL_GENERATORS = [g for g in config["generators"] if GENERATORS[g]["family"] == EXTERNAL]
TRAINED_GENERATORS = [g for g in config["generators"] if g not in EXTERNAL_GENERATORS]
try:
    _classes = dataset_classes(DATASET, RAW, config["dataset"]["options"], config["dataset"]["classes"])
    EXTERNAL_SOURCES = {(g, s): external.scan(g, GENERATORS[g]["path"], s, GENERATORS[g]["classes"], _classes)
                        for g in EXTERNAL_GENERATORS for s in SUBSETS}
except InputError as e:
    raise ValueError(f"config {e}") from None
# Strategies on real data run per (subset, seed); the synthetic ones also per (generator, filter);
# `unified` (the ViT-cGAN critic as classifier) per vitgan-family generator and subset.
REAL_STRATEGIES = [s for s in config["strategies"] if STRATEGIES[s].data == "real"]
SYNTHETIC_STRATEGIES = [s for s in config["strategies"] if STRATEGIES[s].data == "synthetic"]
UNIFIED_GENERATORS = [g for g in TRAINED_GENERATORS if FAMILIES[GENERATORS[g]["family"]].critic_classifies]
LATENT_GENERATORS = [g for g in TRAINED_GENERATORS if FAMILIES[GENERATORS[g]["family"]].latent]
if SYNTHETIC_STRATEGIES and not (config["generators"] and config["filters"]):
    raise ValueError(f"config strategies {SYNTHETIC_STRATEGIES} train on synthetic images and need at least one "
                     "entry in `generators` and in `filters` (or keep strategies: [baseline, traditional])")
if "unified" in config["strategies"] and not UNIFIED_GENERATORS:
    raise ValueError("config strategies has 'unified', which tests the ViT-cGAN critic's class head: add vitgan "
                     "(or a variant with family vitgan) to `generators`")


wildcard_constraints:
    subset=r"\d+",
    seed=r"\d+",
    generator=r"[a-z][a-z0-9_]*",
    encoder=r"[a-z][a-z0-9_]*",
    filter="|".join(sorted(FILTERS, key=len, reverse=True)),  # realism_class before realism

ENV = "../../envs/histosynth.yaml"


@cache
def _code(name, family):
    return stage_code(f"{workflow.basedir}/workflow/scripts/{name}.py", family)


def code(name, generator=None):
    """The code behind the rule `name`, as `params.code` (or inside a trainer's cfg, where it also
    keys resume states): a hash of its script's import closure (histosynth.provenance). Editing
    any module the script reaches reruns exactly those jobs and what depends on them; a generator
    family's own modules count only for that generator's jobs."""
    return _code(name, GENERATORS[generator]["family"] if generator else None)


def raw_inputs():
    """What `prepare` reads: the download's outputs, or the user's own image folder."""
    if DATASET == "folder":
        root = config["dataset"]["options"].get("root")
        if not root:
            raise ValueError("dataset.options.root must name your image folder when dataset.name is 'folder'")
        return [root]
    return [str(p) for p in expected_files(DATASET, RAW)]


def classifier_params(strategy):
    """Only what this strategy uses: augmentation settings never rerun `baseline`."""
    cfg = dict(config["classifier"])
    cfg.pop("threads")
    cfg["augmentation"] = config["augmentation"] if strategy != "baseline" else {}
    cfg["code"] = code("train_classifier")
    return cfg


def extractor_params():
    """The domain feature extractor's own recipe (selection.extractor) with the selection backbone:
    every generator's training scores in its space, so nothing of `classifier` but the device reaches it."""
    e, s = config["selection"]["extractor"], config["selection"]
    return {**{k: e[k] for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "pretrained_weights")},
            "backbone": s["backbone"], "eval_batch_size": s["batch_size"], "device": config["classifier"]["device"],
            "augmentation": section_defaults("augmentation") if e["augmentation"] else {},
            "code": code("feature_extractor")}


def generator_params(generator):
    """Training settings only: sampler settings (latent diffusion) and the GPU count never retrain."""
    cfg = dict(GENERATORS[generator])
    cfg.pop("threads")
    cfg.pop("gpus", None)  # a resource (rule train_generator); a run resumes on any number of GPUs
    cfg.pop("sampling", None)
    cfg["code"] = code("train_generator", generator)
    return cfg


def sampling_params(generator):
    """Latent diffusion's sampler (steps, eta, guidance): read by scoring, generation and top-up filters."""
    return GENERATORS[generator].get("sampling", {})


def vae_params():
    cfg = dict(config["vae"])
    cfg.pop("threads")
    cfg["code"] = code("train_vae")
    return cfg


def generator_inputs(wildcards):
    """Latent diffusion trains on the subset's VAE latents; a critic that classifies is scored on
    the validation and test images (strategy `unified` chooses from those scores)."""
    family = FAMILIES[GENERATORS[wildcards.generator]["family"]]
    return ({"vae": f"{RESULTS}/vae/subset{wildcards.subset}/vae.pt"} if family.latent else {}) | (
        {"valid": f"{RESULTS}/data/valid.h5", "test": f"{RESULTS}/data/test.h5"} if family.critic_classifies else {})


def scoring_params(generator):
    """How training scores its snapshots (histosynth.evaluation.scoring.run_scorer). Training keeps
    only the snapshots a selection could choose from these scores, so they retrain when changed;
    selection.metric and selection.alpha never do."""
    s = config["selection"]
    return {"encoders": ENCODERS, "backbone": s["backbone"], "images_per_class": s["images_per_class"],
            "batch_size": s["batch_size"], "seed": s["seed"], "sampling": sampling_params(generator)}


def external_params(wildcards):
    """What an external set's pool is made of: its content (a digest of its images' bytes, cached
    per file beside the results) and class mapping, never its location, so moving the files
    reruns nothing and replacing one reruns this generator's branch."""
    source = EXTERNAL_SOURCES[(wildcards.generator, int(wildcards.subset))]
    cache = f"{RESULTS}/generators/{wildcards.generator}/subset{wildcards.subset}/.source_sha256.json"
    return {"sha256": external.content_digest(source, cache), "classes": source.classes,
            "kind": "folder" if source.files is not None else "hdf5"}


def inception_inputs(wildcards):
    """Inception statistics and weights for checkpoint scoring (in train_generator), when configured."""
    if not INCEPTION:
        return {}
    return {"inception_stats": f"{RESULTS}/feature_extractor/subset{wildcards.subset}/inception_stats.npz",
            "inception_weights": INCEPTION}


def encoder_inputs(wildcards):
    """The real subset's statistics in every configured encoder's space (rule encoder_stats)."""
    return {f"encoder_{name}": f"{RESULTS}/feature_extractor/subset{wildcards.subset}/encoder_{name}.npz"
            for name in ENCODERS}


def quality_params():
    """The quality metrics' settings (k-NN k, KID subsets, seed): shared by every stage that measures."""
    q = config["quality"]
    return {"k": q["k"], "kid_subsets": q["kid_subsets"], "seed": q["seed"]}


def filter_params(name):
    """Only the settings this filter reads (histosynth.registry): changing λ never reruns `selective`."""
    f = config["filtering"]
    return {"name": name, "ratio": config["generation"]["ratio"], "batch_size": f["batch_size"],
            "exclude_copies": f["exclude_copies"], **{key: f[key] for key in FILTERS[name].settings}}


def selected_snapshot(wildcards):
    """The chosen snapshot of a trained generator, whose threshold filters draw more from it; an
    external set has none."""
    if wildcards.generator in EXTERNAL_GENERATORS:
        return {}
    return {"choice": f"{RESULTS}/generators/{wildcards.generator}/subset{wildcards.subset}/selected.json"}


def copy_thresholds(wildcards):
    """The memorisation audit's thresholds, for filters that drop likely copies (filtering.exclude_copies)."""
    if not config["filtering"]["exclude_copies"]:
        return {}
    return {"reference": f"{RESULTS}/feature_extractor/subset{wildcards.subset}/reference.json"}


def classifier_runs():
    """metrics.json of every classifier run the config asks for: what `aggregate` reads."""
    real = expand(f"{RESULTS}/classifier/{{strategy}}/subset{{subset}}/seed{{seed}}/metrics.json",
                  strategy=REAL_STRATEGIES, subset=SUBSETS, seed=SEEDS)
    synthetic = expand(
        f"{RESULTS}/classifier/{{strategy}}/{{generator}}/{{filter}}/subset{{subset}}/seed{{seed}}/metrics.json",
        strategy=SYNTHETIC_STRATEGIES, generator=config["generators"], filter=config["filters"],
        subset=SUBSETS, seed=SEEDS)
    unified = expand(f"{RESULTS}/classifier/unified/{{generator}}/subset{{subset}}/metrics.json",
                     generator=UNIFIED_GENERATORS if "unified" in config["strategies"] else [], subset=SUBSETS)
    return real + synthetic + unified


def convergence_verdicts():
    """convergence.json of every generator whose images train classifiers: flags for the tables and figures."""
    gens = config["generators"] if SYNTHETIC_STRATEGIES else []
    return expand(f"{RESULTS}/generators/{{generator}}/subset{{subset}}/convergence.json", generator=gens,
                  subset=SUBSETS)


def one_of(names):
    """A wildcard constraint matching exactly `names` (never matching when empty)."""
    return "|".join(names) if names else "(?!)"
