# Rule train_generator: train (or resume) one generator on one subset; a job given several GPUs
# (`generator.<name>.gpus`) runs one torchrun process per GPU.
import os

from histosynth.generative.training import train_generator
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    i, o = smk.input, smk.output
    # Snapshots live beside the declared output, never declared: Snakemake deletes those before a rerun.
    train_generator(i.train, i.subset, o.losses, os.path.join(os.path.dirname(o.losses), "checkpoints"),
                    dict(smk.params.cfg), vae=i.get("vae"), threads=smk.threads,
                    gpus=int(smk.resources.get("gpu", 0) or 0))
