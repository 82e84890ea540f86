# train_classifier per (strategy, subset, seed) -> aggregate into tables


rule train_classifier:
    input:
        train=f"{RESULTS}/data/train.h5",
        valid=f"{RESULTS}/data/valid.h5",
        test=f"{RESULTS}/data/test.h5",
        subset=f"{RESULTS}/subsets/subset{{subset}}.npy",
    output:
        metrics=f"{RESULTS}/classifier/{{strategy}}/subset{{subset}}/seed{{seed}}/metrics.json",
        history=f"{RESULTS}/classifier/{{strategy}}/subset{{subset}}/seed{{seed}}/history.tsv",
        model=f"{RESULTS}/classifier/{{strategy}}/subset{{subset}}/seed{{seed}}/model.pt",
    params:
        strategy=lambda w: w.strategy,
        seed=lambda w: int(w.seed),
        cfg=lambda w: classifier_params(w.strategy),
    wildcard_constraints:
        strategy="|".join(config["strategies"]),
        subset=r"\d+",
        seed=r"\d+",
    threads: config["classifier"]["threads"]
    resources:
        gpu=1 if config["classifier"]["device"] != "cpu" else 0,
    log:
        f"{LOGS}/train_classifier/{{strategy}}_subset{{subset}}_seed{{seed}}.log",
    conda:
        ENV
    script:
        STAGE


rule aggregate:
    input:
        metrics=expand(
            f"{RESULTS}/classifier/{{strategy}}/subset{{subset}}/seed{{seed}}/metrics.json",
            strategy=config["strategies"],
            subset=SUBSETS,
            seed=SEEDS,
        ),
    output:
        tsv=f"{RESULTS}/tables/classification.tsv",
        md=f"{RESULTS}/tables/classification.md",
        tex=f"{RESULTS}/tables/classification.tex",
    params:
        backbone=config["classifier"]["backbone"],
        strategies=config["strategies"],
    log:
        f"{LOGS}/aggregate.log",
    conda:
        ENV
    script:
        STAGE
