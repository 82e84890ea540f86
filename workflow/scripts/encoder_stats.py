# Rule encoder_stats: the real subset's statistics in the space of one of the lab's own encoders.
from histosynth.evaluation.spaces import encoders_from, write_encoder_stats
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    i, p = smk.input, smk.params
    (encoder,) = encoders_from({smk.wildcards.encoder: p.encoder})
    write_encoder_stats(i.train, i.subset, encoder, smk.output.stats, batch_size=p.batch_size, device=p.device)
