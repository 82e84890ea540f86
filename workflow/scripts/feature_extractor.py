# Rule feature_extractor: the domain classifier every generator is scored with, and the real
# subset's feature statistics.
import os

from histosynth.classification.classifier import ClassifierConfig
from histosynth.evaluation.features import train_domain_extractor
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    i, o = smk.input, smk.output
    train_domain_extractor(i.train, i.subset, i.valid, i.test, metrics=o.metrics, history=o.history, model=o.model,
                           stats=o.stats, cfg=ClassifierConfig(**smk.params.cfg),
                           # Not a declared output: Snakemake deletes those before a rerun, this must survive.
                           resume=os.path.join(os.path.dirname(o.metrics), "resume.pt"))
