# Rule prepare: the raw download (or an image folder) -> canonical HDF5 stores per split.
import os

from histosynth.data.prepare import prepare_dataset
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    p = smk.params
    prepare_dataset(p.name, os.path.dirname(smk.input[0]), os.path.dirname(smk.output.stores[0]),
                    classes=p.classes, image_size=p.image_size, options=dict(p.options))
