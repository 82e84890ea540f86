# Rule vae_quality: the VAE's reconstructions of the reference's validation draw, the FID that
# bounds latent diffusion.
from histosynth.evaluation.spaces import RealFeatures
from histosynth.evaluation.vae_quality import measure_vae
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    i, p = smk.input, smk.params
    measure_vae(i.vae, i.vae_metrics, i.train, i.subset, i.valid, smk.output.metrics,
                real=RealFeatures(i.extractor, i.stats, p.backbone), subset_index=int(smk.wildcards.subset),
                images_per_class=p.images_per_class, ratio=p.ratio, quality=p.quality, batch_size=p.batch_size,
                device=p.device)
