# Rule generate: the selected snapshot's pool of pool_factor·r·N_i images per class, and its
# real-vs-synthetic grid.
from histosynth.generative.generate import generate_selected
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    i, p = smk.input, smk.params
    generate_selected(i.choice, i.train, i.subset, smk.output.pool, smk.output.grid, ratio=p.ratio,
                      pool_factor=p.pool_factor, batch_size=p.batch_size, device=p.device, seed=p.seed,
                      sampling=p.sampling)
