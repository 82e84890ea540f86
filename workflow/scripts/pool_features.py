# Rule pool_features: the domain features of every pool image, extracted once for the stages
# that measure the pool and its kept sets (filter, convergence, quality).
from histosynth.evaluation.features import write_pool_features
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    i, p = smk.input, smk.params
    write_pool_features(i.pool, i.extractor, p.backbone, smk.output.features, batch_size=p.batch_size,
                        device=p.device)
