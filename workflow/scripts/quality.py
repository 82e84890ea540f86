# Rule quality: FID, KID, precision/recall, density/coverage and realism of a filter's kept images
# (overall and per class), their memorisation audit, and the real / kept / rejected feature map.
from histosynth.evaluation.quality import measure_kept
from histosynth.evaluation.spaces import RealFeatures, encoders_from
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    i, o, p, w = smk.input, smk.output, smk.params, smk.wildcards
    real = RealFeatures(i.extractor, i.stats, p.backbone, i.get("inception_weights"), i.get("inception_stats"),
                        encoders_from(p.encoders, {name: i[f"encoder_{name}"] for name in p.encoders}))
    measure_kept(i.selected, i.pool, i.pool_features, i.train, i.subset, i.reference, o.metrics, o.plot,
                 o.memorisation, o.pairs, real=real, generator=w.generator, filter=w.filter, subset=int(w.subset),
                 quality=p.quality, batch_size=p.batch_size, device=p.device, max_points=p.max_points)
