# Rule aggregate: every classifier run -> the classification table (mean ± std, paired tests).
from histosynth.job import job
from histosynth.reporting.aggregate import aggregate_classification

with job(snakemake) as smk:  # noqa: F821
    o, p = smk.output, smk.params
    aggregate_classification(list(smk.input.metrics), o.tsv, o.md, o.tex, o.html, o.runs, backbone=p.backbone,
                             strategies=p.strategies, generators=p.generators, filters=p.filters,
                             convergence_paths=list(smk.input.convergence))
