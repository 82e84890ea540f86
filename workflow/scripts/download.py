# Rule download: fetch the dataset's files and verify their checksums.
import os

from histosynth.data.download import download_dataset
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    p = smk.params
    base_url = smk.config["dataset"]["download"]["base_url"]  # not a param: a mirror change reruns nothing
    download_dataset(p.name, os.path.dirname(smk.output[0]), base_url=base_url, checksums=dict(p.checksums))
