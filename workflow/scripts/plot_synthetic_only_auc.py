# Rule plot_synthetic_only_auc: synthetic-only test AUC against the real baseline.
from histosynth.job import job
from histosynth.reporting.aggregate import plot_synthetic_only_auc

with job(snakemake) as smk:  # noqa: F821
    plot_synthetic_only_auc(smk.input.runs, smk.output.plot, generators=smk.params.generators,
                            filters=smk.params.filters, convergence_paths=list(smk.input.convergence))
