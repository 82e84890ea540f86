# Rule score_checkpoints: FID, KID, precision and recall of every snapshot against the real subset.
import os

from histosynth.evaluation.scoring import score_training_run
from histosynth.evaluation.spaces import RealFeatures, encoders_from
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    i, p = smk.input, smk.params
    real = RealFeatures(i.extractor, i.stats, p.backbone, i.get("inception_weights"), i.get("inception_stats"),
                        encoders_from(p.encoders, {name: i[f"encoder_{name}"] for name in p.encoders}))
    score_training_run(os.path.join(os.path.dirname(i.losses), "checkpoints"), i.train, i.subset,
                       smk.output.scores, real=real, images_per_class=p.images_per_class, batch_size=p.batch_size,
                       device=p.device, seed=p.seed, sampling=p.sampling)
