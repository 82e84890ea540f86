# histosynth: do class-conditional synthetic images improve a histopathology
# classifier? Run `snakemake --cores 8` (see README.md).
import sys

from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.basedir}/config.yaml"


# Snakemake's validation (defaults filled in), its error cut to one line naming the key:
# `config generator.histogan.model: unknown key 'z_dimm' (expected one of: ...)`.
sys.path.insert(0, f"{workflow.basedir}/src")
from histosynth.config_schema import validate_config  # noqa: E402

validate_config(config, f"{workflow.basedir}/workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/classifier.smk"
include: "workflow/rules/generator.smk"
include: "workflow/rules/filter.smk"


rule all:
    input:
        f"{RESULTS}/tables/classification.tsv",
        f"{RESULTS}/tables/classification.md",
        f"{RESULTS}/tables/classification.tex",
        f"{RESULTS}/tables/classification.html",
        [f"{RESULTS}/figures/auc_by_strategy.png"] if {"augment", "transfer"} & set(config["strategies"]) else [],
        [f"{RESULTS}/figures/synthetic_only_auc.png"] if "synthetic_only" in config["strategies"] else [],
        expand(
            f"{RESULTS}/generators/{{generator}}/subset{{subset}}/{{out}}",
            generator=config["generators"],
            subset=SUBSETS,
            out=["pool.h5", "samples.png", "convergence.json"],
        ),
        expand(f"{RESULTS}/generators/{{generator}}/subset{{subset}}/fid_curve.png", generator=TRAINED_GENERATORS,
               subset=SUBSETS),
        expand(
            f"{RESULTS}/generators/{{generator}}/subset{{subset}}/filters/{{filter}}/feature_map.png",
            generator=config["generators"],
            subset=SUBSETS,
            filter=config["filters"],
        ),
        [f"{RESULTS}/tables/quality.{ext}" for ext in ("tsv", "md", "tex", "html")] if config["generators"] else [],
    default_target: True
