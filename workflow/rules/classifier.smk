# train_classifier per (strategy, subset, seed) on real data, and per
# (strategy, generator, filter, subset, seed) with synthetic data -> aggregate
# into tables -> figures.

CLS = f"{RESULTS}/classifier/{{strategy}}/subset{{subset}}/seed{{seed}}"
CLS_SYN = f"{RESULTS}/classifier/{{strategy}}/{{generator}}/{{filter}}/subset{{subset}}/seed{{seed}}"


rule train_classifier:
    input:
        train=f"{RESULTS}/data/train.h5",
        valid=f"{RESULTS}/data/valid.h5",
        test=f"{RESULTS}/data/test.h5",
        subset=f"{RESULTS}/subsets/subset{{subset}}.npy",
    output:
        metrics=f"{CLS}/metrics.json",
        history=f"{CLS}/history.tsv",
        model=f"{CLS}/model.pt",
    params:
        strategy=lambda w: w.strategy,
        seed=lambda w: int(w.seed),
        cfg=lambda w: classifier_params(w.strategy),
    wildcard_constraints:
        strategy=one_of(REAL_STRATEGIES),
    threads: config["classifier"]["threads"]
    resources:
        gpu=1 if config["classifier"]["device"] != "cpu" else 0,
    log:
        f"{LOGS}/train_classifier/{{strategy}}_subset{{subset}}_seed{{seed}}.log",
    conda:
        ENV
    script:
        "../scripts/train_classifier.py"


# The same job fed one generator's filtered images (augment, transfer, synthetic_only).
use rule train_classifier as train_classifier_synthetic with:
    input:
        train=f"{RESULTS}/data/train.h5",
        valid=f"{RESULTS}/data/valid.h5",
        test=f"{RESULTS}/data/test.h5",
        subset=f"{RESULTS}/subsets/subset{{subset}}.npy",
        synthetic=f"{RESULTS}/generators/{{generator}}/subset{{subset}}/filters/{{filter}}/selected.h5",
    output:
        metrics=f"{CLS_SYN}/metrics.json",
        history=f"{CLS_SYN}/history.tsv",
        model=f"{CLS_SYN}/model.pt",
    wildcard_constraints:
        strategy=one_of(SYNTHETIC_STRATEGIES),
    log:
        f"{LOGS}/train_classifier/{{strategy}}_{{generator}}_{{filter}}_subset{{subset}}_seed{{seed}}.log",


# Strategy `unified`: the ViT-cGAN critic's class head classifies the real test set
# (vit-cgan-unified-framework.md Algorithm 1); the snapshot is picked among the scored
# ones by FID and validation classification (§IV-B), per `unified.criterion`.
rule evaluate_unified:
    input:
        scores=f"{RESULTS}/generators/{{generator}}/subset{{subset}}/checkpoint_scores.tsv",
        valid=f"{RESULTS}/data/valid.h5",
        test=f"{RESULTS}/data/test.h5",
        subset=f"{RESULTS}/subsets/subset{{subset}}.npy",  # the critic's training data, named in metrics.json
    output:
        metrics=f"{RESULTS}/classifier/unified/{{generator}}/subset{{subset}}/metrics.json",
        curve=f"{RESULTS}/classifier/unified/{{generator}}/subset{{subset}}/checkpoint_validation.tsv",
    params:
        code=lambda w: code("evaluate_unified", w.generator),
        criterion=config["unified"]["criterion"],
        metric=config["selection"]["metric"],
        alpha=config["selection"]["alpha"],
        seed=lambda w: GENERATORS[w.generator]["seed"],
        model=lambda w: GENERATORS[w.generator]["model"],
    wildcard_constraints:
        generator=one_of(UNIFIED_GENERATORS),
    log:
        f"{LOGS}/evaluate_unified/{{generator}}_subset{{subset}}.log",
    conda:
        ENV
    script:
        "../scripts/evaluate_unified.py"


rule aggregate:
    input:
        metrics=classifier_runs(),
        convergence=convergence_verdicts(),
    output:
        tsv=f"{RESULTS}/tables/classification.tsv",
        md=f"{RESULTS}/tables/classification.md",
        tex=f"{RESULTS}/tables/classification.tex",
        html=report(f"{RESULTS}/tables/classification.html", category="Classification",
                    caption="../report/classification_table.rst", labels={"result": "classification table"}),
        runs=f"{RESULTS}/tables/classification_runs.tsv",
    params:
        code=code("aggregate"),
        backbone=config["classifier"]["backbone"],
        strategies=config["strategies"],
        # Row order of the synthetic and unified blocks; without them they do not matter.
        generators=config["generators"] if SYNTHETIC_STRATEGIES or "unified" in config["strategies"] else [],
        filters=config["filters"] if SYNTHETIC_STRATEGIES else [],
    log:
        f"{LOGS}/aggregate.log",
    conda:
        ENV
    script:
        "../scripts/aggregate.py"


rule plot_auc_by_strategy:
    input:
        runs=f"{RESULTS}/tables/classification_runs.tsv",
        convergence=convergence_verdicts(),
    output:
        plot=report(f"{RESULTS}/figures/auc_by_strategy.png", category="Classification",
                    caption="../report/auc_by_strategy.rst", labels={"result": "AUC per generator and strategy"}),
    params:
        code=code("plot_auc_by_strategy"),
        generators=config["generators"],
        filters=config["filters"],
        strategies=config["strategies"],
    log:
        f"{LOGS}/plot_auc_by_strategy.log",
    conda:
        ENV
    script:
        "../scripts/plot_auc_by_strategy.py"


rule plot_synthetic_only_auc:
    input:
        runs=f"{RESULTS}/tables/classification_runs.tsv",
        convergence=convergence_verdicts(),
    output:
        plot=report(f"{RESULTS}/figures/synthetic_only_auc.png", category="Classification",
                    caption="../report/synthetic_only_auc.rst", labels={"result": "synthetic-only AUC"}),
    params:
        code=code("plot_synthetic_only_auc"),
        generators=config["generators"],
        filters=config["filters"],
    log:
        f"{LOGS}/plot_synthetic_only_auc.log",
    conda:
        ENV
    script:
        "../scripts/plot_synthetic_only_auc.py"
