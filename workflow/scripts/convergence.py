# Rule convergence: is the selected snapshot near real-vs-real? The verdict flags tables, figures
# and the report; the checkpoint curve is drawn against the reference.
from histosynth.evaluation.reference import judge_convergence
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    i, o, p = smk.input, smk.output, smk.params
    judge_convergence(i.pool, i.pool_features, i.choice, i.curve, i.reference, i.train, i.subset, o.metrics, o.plot,
                      o.memorisation, real_stats=i.stats, generator=smk.wildcards.generator,
                      subset_index=int(smk.wildcards.subset), ratio=p.ratio, quality=p.quality,
                      converged=p.converged, metric=p.metric, alpha=p.alpha)
