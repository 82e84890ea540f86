# Rule evaluate_unified: the ViT-cGAN critic's class head as the classifier (strategy `unified`),
# chosen from the scores training wrote.
from histosynth.classification.unified import evaluate_unified
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    i, p = smk.input, smk.params
    evaluate_unified(i.scores, i.valid, i.test, smk.output.metrics, smk.output.curve,
                     generator=smk.wildcards.generator, subset=str(i.subset), model=p.model, seed=p.seed,
                     metric=p.metric, alpha=p.alpha, criterion=p.criterion)
