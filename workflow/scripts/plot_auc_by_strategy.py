# Rule plot_auc_by_strategy: test AUC per generator, filter and strategy.
from histosynth.job import job
from histosynth.reporting.aggregate import plot_auc_by_strategy

with job(snakemake) as smk:  # noqa: F821
    p = smk.params
    plot_auc_by_strategy(smk.input.runs, smk.output.plot, generators=p.generators, filters=p.filters,
                         strategies=p.strategies, convergence_paths=list(smk.input.convergence))
