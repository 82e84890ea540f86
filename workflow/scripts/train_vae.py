# Rule train_vae: the subset's VAE, whose latent space latent diffusion trains in.
import os

from histosynth.generative.vae_training import VAETrainConfig, train_subset_vae
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    i, o = smk.input, smk.output
    train_subset_vae(i.train, i.subset, i.valid, VAETrainConfig(**smk.params.cfg), model_path=o.model,
                     losses_path=o.losses, metrics_path=o.metrics,
                     # Not a declared output: Snakemake deletes those before a rerun, this must survive.
                     resume_path=os.path.join(os.path.dirname(o.model), "resume.pt"))
