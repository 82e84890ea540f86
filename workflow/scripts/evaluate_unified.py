# Rule evaluate_unified: the ViT-cGAN critic's class head as the classifier (strategy `unified`).
import os

from histosynth.classification.unified import evaluate_unified
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    i, p = smk.input, smk.params
    evaluate_unified(i.scores, os.path.join(os.path.dirname(i.scores), "checkpoints"), i.valid, i.test,
                     smk.output.metrics, smk.output.curve, generator=smk.wildcards.generator, subset=str(i.subset),
                     seed=p.seed, metric=p.metric, alpha=p.alpha, criterion=p.criterion, batch_size=p.batch_size,
                     device=p.device)
