# Rule train_generator: train (or resume) one generator on one subset, scoring each snapshot as it
# is written; a job given several GPUs (`generator.<name>.gpus`) runs one torchrun process per GPU.
import os

from histosynth.generative.training import train_generator
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    i, o, p = smk.input, smk.output, smk.params
    scoring = {**p.scoring, "extractor": i.extractor, "stats": i.stats,
               "inception_weights": i.get("inception_weights"), "inception_stats": i.get("inception_stats"),
               "encoder_stats": {name: i[f"encoder_{name}"] for name in p.scoring["encoders"]},
               "valid": i.get("valid"), "test": i.get("test")}
    # Snapshots live beside the declared output, never declared: Snakemake deletes those before a rerun.
    train_generator(i.train, i.subset, o.losses, os.path.join(os.path.dirname(o.losses), "checkpoints"),
                    dict(p.cfg), vae=i.get("vae"), scoring=scoring, scores_path=o.scores, threads=smk.threads,
                    gpus=int(smk.resources.get("gpu", 0) or 0))
