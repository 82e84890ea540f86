# Rule plot_auc_by_strategy: test AUC per generator, filter and strategy.
from histosynth.aggregate import plot_auc_by_strategy
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    p = smk.params
    plot_auc_by_strategy(smk.input.runs, smk.output.plot, generators=p.generators, filters=p.filters,
                         strategies=p.strategies, convergence_paths=list(smk.input.convergence))
