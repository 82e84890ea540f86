# download -> prepare (canonical HDF5 per split) -> split (K training subsets)

if DATASET != "folder":

    # On a cluster, where Snakemake runs: compute nodes often have no internet.
    localrules:
        download,

    rule download:
        output:
            [directory(p) if DATASET == "nct_crc_he" else p for p in raw_inputs()],
        params:
            # Neither `code` nor the mirror (dataset.download.base_url, read by the script from the
            # config): the checksums pin the content, so edited download code or another mirror of
            # the same files never refetches them, nor reruns anything after.
            name=DATASET,
            checksums=config["dataset"]["download"]["checksums"],
        log:
            f"{LOGS}/download.log",
        conda:
            ENV
        script:
            "../scripts/download.py"


DEMO_FIGURES = (
    [f"{RESULTS}/data/demo_regions_{c}.png" for c in ("normal", "tumor")] if DATASET == "demo" else []
)


rule prepare:
    input:
        raw_inputs(),
    output:
        stores=expand(f"{RESULTS}/data/{{split}}.h5", split=SPLITS),
        counts=f"{RESULTS}/data/patch_counts.tsv",
        figures=DEMO_FIGURES,
    params:
        code=code("prepare"),
        name=DATASET,
        classes=config["dataset"]["classes"],
        image_size=config["dataset"]["image_size"],
        options=config["dataset"]["options"],
    log:
        f"{LOGS}/prepare.log",
    conda:
        ENV
    script:
        "../scripts/prepare.py"


rule split:
    input:
        train=f"{RESULTS}/data/train.h5",
    output:
        subsets=expand(f"{RESULTS}/subsets/subset{{k}}.npy", k=SUBSETS),
        counts=f"{RESULTS}/subsets/subset_counts.tsv",
    params:
        code=code("split"),
        fraction=config["subsets"]["fraction"],
        seed=config["subsets"]["seed"],
    log:
        f"{LOGS}/split.log",
    conda:
        ENV
    script:
        "../scripts/split.py"
