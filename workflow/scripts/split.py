# Rule split: K non-overlapping, class-balanced training subsets.
from histosynth.data.split import write_subsets
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    write_subsets(smk.input.train, list(smk.output.subsets), smk.output.counts, fraction=smk.params.fraction,
                  seed=smk.params.seed)
