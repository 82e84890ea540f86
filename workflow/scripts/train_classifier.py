# Rules train_classifier and train_classifier_synthetic: one classifier run (strategy, subset, seed),
# fed a filtered synthetic set for the synthetic strategies.
import os

from histosynth.classification.classifier import ClassifierConfig, train_classifier
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    i, o, p, w = smk.input, smk.output, smk.params, smk.wildcards
    synthetic = i.get("synthetic")
    train_classifier(i.train, i.subset, i.valid, i.test, metrics_path=o.metrics, history_path=o.history,
                     model_path=o.model,
                     # Not a declared output: Snakemake deletes those before a rerun, this must survive.
                     resume_path=os.path.join(os.path.dirname(o.metrics), "resume.pt"),
                     strategy=p.strategy, seed=p.seed, cfg=ClassifierConfig(**p.cfg), synthetic_store=synthetic,
                     tags={"generator": w.generator, "filter": w.filter} if synthetic else None)
