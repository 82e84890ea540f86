# Rule convergence: is the selected snapshot near real-vs-real? The verdict flags tables, figures
# and the report; the checkpoint curve is drawn against the reference (an external set has none).
from histosynth.evaluation.reference import judge_convergence
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    i, o, p = smk.input, smk.output, smk.params
    judge_convergence(i.pool, i.pool_features, i.get("choice"), i.get("curve"), i.reference, i.train, i.subset,
                      o.metrics, o.get("plot"), o.memorisation, real_stats=i.stats, generator=smk.wildcards.generator,
                      subset_index=int(smk.wildcards.subset), ratio=p.ratio, quality=p.quality,
                      converged=p.converged, metric=p.metric, alpha=p.alpha)
