# Rule inception_stats: pytorch-fid Inception statistics of the real subset, for standard FID.
from histosynth.evaluation.features import write_inception_stats
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    i, p = smk.input, smk.params
    write_inception_stats(i.train, i.subset, i.weights, smk.output.stats, batch_size=p.batch_size, device=p.device)
