# Paths and small helpers shared by the rules. Everything a rule needs from the
# config reaches it through `params`, so Snakemake's params rerun-trigger
# reruns exactly the jobs whose settings changed.
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from histosynth.download import expected_files  # noqa: E402
from histosynth.errors import InputError  # noqa: E402
from histosynth.generators import resolve_generators  # noqa: E402
from histosynth.provenance import code_hash  # noqa: E402
from histosynth.prepare import resolve_options  # noqa: E402

DATASET = config["dataset"]["name"]
RAW = f"{config['resources_dir']}/{DATASET}"
RESULTS = f"{config['results_dir']}/{DATASET}"
LOGS = f"logs/{DATASET}"
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
SUBSETS = list(range(config["subsets"]["k"]))
SEEDS = list(range(config["seeds"]))
# Every generator's full settings, named variants (`generator.<name>.family`) merged over
# their family's section and checked against its schema; rules read them from here.
try:
    _family_schemas = yaml.safe_load(open(f"{workflow.basedir}/workflow/schemas/config.schema.yaml"))
    GENERATORS = resolve_generators(config["generators"], config["generator"],
                                    _family_schemas["properties"]["generator"]["properties"])
except InputError as e:
    raise ValueError(str(e)) from None
# Strategies on real data run per (subset, seed); the synthetic ones also per (generator, filter);
# `unified` (the ViT-cGAN critic as classifier) per vitgan-family generator and subset.
REAL_STRATEGIES = [s for s in config["strategies"] if s in ("baseline", "traditional")]
SYNTHETIC_STRATEGIES = [s for s in config["strategies"] if s in ("augment", "transfer", "synthetic_only")]
UNIFIED_GENERATORS = [g for g in config["generators"] if GENERATORS[g]["family"] == "vitgan"]
LATENT_GENERATORS = [g for g in config["generators"] if GENERATORS[g]["family"].startswith("ldm_")]
if SYNTHETIC_STRATEGIES and not (config["generators"] and config["filters"]):
    raise ValueError(f"config strategies {SYNTHETIC_STRATEGIES} train on synthetic images and need at least one "
                     "entry in `generators` and in `filters` (or keep strategies: [baseline, traditional])")
if "unified" in config["strategies"] and not UNIFIED_GENERATORS:
    raise ValueError("config strategies has 'unified', which tests the ViT-cGAN critic's class head: add vitgan "
                     "(or a variant with family vitgan) to `generators`")
STAGE = "../scripts/stage.py"


wildcard_constraints:
    subset=r"\d+",
    seed=r"\d+",
    generator=r"[a-z][a-z0-9_]*",
    filter="|".join(["none", "histogan", "realism_class", "realism", "confidence"]),

ENV = "../../envs/histosynth.yaml"


# The package modules each stage runs, hashed (provenance.py) and given to the rule as
# `params.code` (or inside a trainer's cfg, where it also keys resume states): editing
# one reruns exactly those stages and what depends on them. Shared plumbing (stages.py,
# fileio.py, store.py, checkpoint.py) is left out: it moves files, not numbers.
CODE = {
    "prepare": code_hash("prepare", "tissue"),
    "split": code_hash("split"),
    "classifier": code_hash("classifier", "augment", "batches", "metrics"),
    "feature_extractor": code_hash("classifier", "augment", "batches", "metrics", "features"),
    "inception_stats": code_hash("features"),
    "train_vae": code_hash("vae_training", "models/vae"),
    "score_checkpoints": code_hash("generate", "features", "metrics", "reference"),
    "select_checkpoint": code_hash("selection", "metrics"),
    "reference_quality": code_hash("reference", "quality", "features", "metrics"),
    "vae_quality": code_hash("reference", "quality", "features", "metrics", "vae_training", "models/vae"),
    "convergence": code_hash("reference", "quality", "features", "metrics", "selection"),
    "generate": code_hash("generate", "reference"),
    "filter": code_hash("filtering", "filters", "features", "metrics", "reference"),
    "quality": code_hash("quality", "features", "metrics"),
    "quality_table": code_hash("quality", "tables", "reference"),
    "evaluate_unified": code_hash("unified", "models/vitgan", "metrics"),
    "aggregate": code_hash("aggregate", "tables"),
}
FAMILY_CODE = {"histogan": ["models/histogan"], "cgan": ["models/cgan"], "vitgan": ["models/vitgan"],
               "ldm_unet": ["ldm", "models/diffusion", "models/unet"],
               "ldm_dit": ["ldm", "models/diffusion", "models/dit"]}


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
    cfg["code"] = CODE["classifier"]
    return cfg


def extractor_params():
    """The domain feature extractor: the classifier recipe with the selection backbone."""
    cfg = classifier_params("traditional")
    cfg["backbone"] = config["selection"]["backbone"]
    cfg["epochs"] = config["selection"]["extractor_epochs"]
    cfg["code"] = CODE["feature_extractor"]
    return cfg


def generator_params(generator):
    """Training settings only: sampler settings (latent diffusion) and the GPU count never retrain."""
    cfg = dict(GENERATORS[generator])
    cfg.pop("threads")
    cfg.pop("gpus", None)  # a resource (rule train_generator); a run resumes on any number of GPUs
    cfg.pop("sampling", None)
    cfg["code"] = code_hash("gan_training", *FAMILY_CODE[cfg["family"]])
    return cfg


def sampling_params(generator):
    """Latent diffusion's sampler (steps, eta, guidance): read by scoring, generation and top-up filters."""
    return GENERATORS[generator].get("sampling", {})


def vae_params():
    cfg = dict(config["vae"])
    cfg.pop("threads")
    cfg["code"] = CODE["train_vae"]
    return cfg


def generator_inputs(wildcards):
    """Latent diffusion trains on the subset's VAE latents."""
    if GENERATORS[wildcards.generator]["family"].startswith("ldm_"):
        return {"vae": f"{RESULTS}/vae/subset{wildcards.subset}/vae.pt"}
    return {}


def inception_inputs(wildcards):
    """Inception statistics and weights for score_checkpoints, when configured."""
    if not INCEPTION:
        return {}
    return {"inception_stats": f"{RESULTS}/feature_extractor/subset{wildcards.subset}/inception_stats.npz",
            "inception_weights": INCEPTION}


def quality_params():
    """The quality metrics' settings (k-NN k, KID subsets, seed): shared by every stage that measures."""
    q = config["quality"]
    return {"k": q["k"], "kid_subsets": q["kid_subsets"], "seed": q["seed"]}


def filter_params(name):
    """Only the settings this filter reads: changing λ never reruns the HistoGAN filter."""
    f = config["filtering"]
    cfg = {"name": name, "ratio": config["generation"]["ratio"], "batch_size": f["batch_size"]}
    if name == "histogan":
        cfg |= {"mc_dropout": f["mc_dropout"], "mc_passes": f["mc_passes"], "seed": f["seed"]}
    elif name in ("realism", "realism_class"):
        cfg |= {"realism_k": f["realism_k"], "realism_threshold": f["realism_threshold"],
                "max_draw_factor": f["max_draw_factor"]}
    elif name == "confidence":
        cfg |= {"confidence_threshold": f["confidence_threshold"], "max_draw_factor": f["max_draw_factor"]}
    return cfg


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
