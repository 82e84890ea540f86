# Rule filter: keep r·N_i images per class from the pool (none, HistoGAN selective, realism,
# class realism, confidence), drawing more from the generator when a filter runs short (a trained
# generator's: an external set has no snapshot, `choice`).
from histosynth.evaluation.spaces import RealFeatures
from histosynth.evaluation.filtering import FilterConfig, filter_selected
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    i, o, p = smk.input, smk.output, smk.params
    filter_selected(FilterConfig(**p.cfg), i.pool, i.train, i.subset, i.get("choice"), o.selected, o.summary,
                    real=RealFeatures(i.extractor, i.stats, p.backbone), device=p.device, sampling=p.sampling,
                    reference=i.get("reference"), pool_features=i.pool_features)
