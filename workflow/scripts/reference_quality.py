# Rule reference_quality: real validation vs the real training subset, drawn as the synthetic sets
# are: the reference line of every FID curve and the first row of the quality table.
from histosynth.evaluation.reference import measure_reference
from histosynth.evaluation.spaces import RealFeatures, encoders_from
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    i, p = smk.input, smk.params
    real = RealFeatures(i.extractor, i.stats, p.backbone, i.get("inception_weights"), i.get("inception_stats"),
                        encoders_from(p.encoders, {name: i[f"encoder_{name}"] for name in p.encoders}))
    measure_reference(i.train, i.subset, i.valid, smk.output.reference, real=real,
                      subset_index=int(smk.wildcards.subset), images_per_class=p.images_per_class, ratio=p.ratio,
                      quality=p.quality, batch_size=p.batch_size, device=p.device)
