# Rule import_external: an external synthetic set's pool for one subset (family: external), its
# real-vs-synthetic grid and each pool image's source file and content hash.
from histosynth.data.external import import_selected
from histosynth.job import job

with job(snakemake) as smk:  # noqa: F821
    w, i, o, p = smk.wildcards, smk.input, smk.output, smk.params
    # Where the set lives is read from the config, not a param: moving it reruns nothing (its
    # content digest, p.source, is what reruns this job).
    path = smk.config["generator"][w.generator]["path"]
    import_selected(w.generator, path, int(w.subset), p.source["classes"], i.train, i.subset, o.pool, o.grid,
                    o.sources, ratio=p.ratio, pool_factor=p.pool_factor, seed=p.seed, set_sha256=p.source["sha256"])
