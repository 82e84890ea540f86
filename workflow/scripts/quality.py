# Rule quality: FID, KID, precision and recall of a filter's kept images, and the real / kept /
# rejected feature map.
from histosynth.features import RealFeatures
from histosynth.job import job
from histosynth.quality import measure_kept

with job(snakemake) as smk:  # noqa: F821
    i, o, p, w = smk.input, smk.output, smk.params, smk.wildcards
    real = RealFeatures(i.extractor, i.stats, p.backbone, i.get("inception_weights"), i.get("inception_stats"))
    measure_kept(i.selected, i.pool, i.train, o.metrics, o.plot, real=real, generator=w.generator, filter=w.filter,
                 subset=int(w.subset), quality=p.quality, batch_size=p.batch_size, device=p.device,
                 max_points=p.max_points)
