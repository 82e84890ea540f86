# Rule select_checkpoint: EMA-smooth the checkpoint curve and pick the best snapshot.
import os

from histosynth.evaluation.selection import write_selection
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    write_selection(smk.input.scores, smk.output.curve, smk.output.choice, metric=smk.params.metric,
                    alpha=smk.params.alpha, snapshots=os.path.join(os.path.dirname(smk.input.scores), "checkpoints"))
