# Rule quality_table: every quality measurement -> the quality table, with the real-vs-real
# reference rows, the VAE bounds and the convergence flags.
from histosynth.evaluation.quality import aggregate_quality
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    i, o, p = smk.input, smk.output, smk.params
    aggregate_quality(list(i.metrics), o.tsv, o.md, o.tex, o.html, generators=p.generators, filters=p.filters,
                      reference_paths=list(i.references), convergence_paths=list(i.convergence),
                      vae_paths=list(i.vae), latent_generators=p.latent_generators)
