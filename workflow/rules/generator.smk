# Per (generator, subset): train, scoring every snapshot as it is written -> pick by smoothed FID
# -> bulk pool -> convergence verdict against the real-vs-real reference (per subset). An
# external set (family: external) is imported as the pool instead (rule import_external).
# Snapshots live in checkpoints/ beside the declared outputs, never declared
# themselves: Snakemake deletes declared outputs before a rerun, and a resumed
# training job needs them.

GEN = f"{RESULTS}/generators/{{generator}}/subset{{subset}}"


rule feature_extractor:
    input:
        train=f"{RESULTS}/data/train.h5",
        valid=f"{RESULTS}/data/valid.h5",
        test=f"{RESULTS}/data/test.h5",
        subset=f"{RESULTS}/subsets/subset{{subset}}.npy",
    output:
        metrics=f"{RESULTS}/feature_extractor/subset{{subset}}/metrics.json",
        history=f"{RESULTS}/feature_extractor/subset{{subset}}/history.tsv",
        model=f"{RESULTS}/feature_extractor/subset{{subset}}/model.pt",
        stats=f"{RESULTS}/feature_extractor/subset{{subset}}/real_stats.npz",
    params:
        cfg=lambda w: extractor_params(),
    threads: config["classifier"]["threads"]
    resources:
        gpu=1 if config["classifier"]["device"] != "cpu" else 0,
    log:
        f"{LOGS}/feature_extractor/subset{{subset}}.log",
    conda:
        ENV
    script:
        "../scripts/feature_extractor.py"


rule inception_stats:
    input:
        train=f"{RESULTS}/data/train.h5",
        subset=f"{RESULTS}/subsets/subset{{subset}}.npy",
        weights=lambda w: INCEPTION,
    output:
        stats=f"{RESULTS}/feature_extractor/subset{{subset}}/inception_stats.npz",
    params:
        code=code("inception_stats"),
        batch_size=config["selection"]["batch_size"],
        device=config["classifier"]["device"],
    threads: config["classifier"]["threads"]
    resources:
        gpu=1 if config["classifier"]["device"] != "cpu" else 0,
    log:
        f"{LOGS}/inception_stats/subset{{subset}}.log",
    conda:
        ENV
    script:
        "../scripts/inception_stats.py"


rule encoder_stats:
    input:
        train=f"{RESULTS}/data/train.h5",
        subset=f"{RESULTS}/subsets/subset{{subset}}.npy",
        encoder=lambda w: ENCODERS[w.encoder]["path"],
    output:
        stats=f"{RESULTS}/feature_extractor/subset{{subset}}/encoder_{{encoder}}.npz",
    params:
        code=code("encoder_stats"),
        encoder=lambda w: ENCODERS[w.encoder],
        batch_size=config["selection"]["batch_size"],
        device=config["classifier"]["device"],
    threads: config["classifier"]["threads"]
    resources:
        gpu=1 if config["classifier"]["device"] != "cpu" else 0,
    log:
        f"{LOGS}/encoder_stats/subset{{subset}}_{{encoder}}.log",
    conda:
        ENV
    script:
        "../scripts/encoder_stats.py"


# Real validation vs real training subset, drawn as the synthetic sets are: the reference
# line of every FID curve and the first row of the quality table (histosynth.evaluation.reference).
rule reference_quality:
    input:
        unpack(inception_inputs),
        unpack(encoder_inputs),
        train=f"{RESULTS}/data/train.h5",
        valid=f"{RESULTS}/data/valid.h5",
        subset=f"{RESULTS}/subsets/subset{{subset}}.npy",
        extractor=f"{RESULTS}/feature_extractor/subset{{subset}}/model.pt",
        stats=f"{RESULTS}/feature_extractor/subset{{subset}}/real_stats.npz",
    output:
        reference=f"{RESULTS}/feature_extractor/subset{{subset}}/reference.json",
    params:
        code=code("reference_quality"),
        encoders=ENCODERS,
        backbone=config["selection"]["backbone"],
        images_per_class=config["selection"]["images_per_class"],
        ratio=config["generation"]["ratio"],
        quality=quality_params(),
        batch_size=config["selection"]["batch_size"],
        device=config["classifier"]["device"],
    threads: config["classifier"]["threads"]
    resources:
        gpu=1 if config["classifier"]["device"] != "cpu" else 0,
    log:
        f"{LOGS}/reference_quality/subset{{subset}}.log",
    conda:
        ENV
    script:
        "../scripts/reference_quality.py"


rule train_vae:
    input:
        train=f"{RESULTS}/data/train.h5",
        valid=f"{RESULTS}/data/valid.h5",
        subset=f"{RESULTS}/subsets/subset{{subset}}.npy",
    output:
        model=f"{RESULTS}/vae/subset{{subset}}/vae.pt",
        losses=f"{RESULTS}/vae/subset{{subset}}/losses.tsv",
        metrics=f"{RESULTS}/vae/subset{{subset}}/metrics.json",
    params:
        cfg=lambda w: vae_params(),
    threads: config["vae"]["threads"]
    # Long jobs first: each VAE gates both latent-diffusion trainings of its subset.
    priority: 2
    resources:
        gpu=0 if config["vae"]["device"] == "cpu" else 1,
    log:
        f"{LOGS}/train_vae/subset{{subset}}.log",
    conda:
        ENV
    script:
        "../scripts/train_vae.py"


# The VAE's reconstructions of the reference's validation draw: the FID latent diffusion cannot beat.
rule vae_quality:
    input:
        vae=f"{RESULTS}/vae/subset{{subset}}/vae.pt",
        vae_metrics=f"{RESULTS}/vae/subset{{subset}}/metrics.json",
        train=f"{RESULTS}/data/train.h5",
        valid=f"{RESULTS}/data/valid.h5",
        subset=f"{RESULTS}/subsets/subset{{subset}}.npy",
        extractor=f"{RESULTS}/feature_extractor/subset{{subset}}/model.pt",
        stats=f"{RESULTS}/feature_extractor/subset{{subset}}/real_stats.npz",
    output:
        metrics=f"{RESULTS}/vae/subset{{subset}}/quality.json",
    params:
        code=code("vae_quality"),
        backbone=config["selection"]["backbone"],
        images_per_class=config["selection"]["images_per_class"],
        ratio=config["generation"]["ratio"],
        quality=quality_params(),
        batch_size=config["selection"]["batch_size"],
        device=config["vae"]["device"],
    threads: config["vae"]["threads"]
    resources:
        gpu=0 if config["vae"]["device"] == "cpu" else 1,
    log:
        f"{LOGS}/vae_quality/subset{{subset}}.log",
    conda:
        ENV
    script:
        "../scripts/vae_quality.py"


# Training scores each snapshot as it writes it and keeps only those a selection could choose
# (histosynth.evaluation.selection.kept_epochs), so it reads the scoring spaces too.
rule train_generator:
    input:
        unpack(generator_inputs),
        unpack(inception_inputs),
        unpack(encoder_inputs),
        train=f"{RESULTS}/data/train.h5",
        subset=f"{RESULTS}/subsets/subset{{subset}}.npy",
        extractor=f"{RESULTS}/feature_extractor/subset{{subset}}/model.pt",
        stats=f"{RESULTS}/feature_extractor/subset{{subset}}/real_stats.npz",
    output:
        losses=f"{GEN}/losses.tsv",
        scores=f"{GEN}/checkpoint_scores.tsv",
    params:
        cfg=lambda w: generator_params(w.generator),
        scoring=lambda w: scoring_params(w.generator),
    threads: lambda w: GENERATORS[w.generator]["threads"]
    priority: 1  # before the classifier runs that do not wait for it
    resources:
        # `gpus` > 1: one torchrun process per GPU (DistributedDataParallel, histosynth.generative.distributed).
        gpu=lambda w: 0 if GENERATORS[w.generator]["device"] == "cpu" else GENERATORS[w.generator].get("gpus", 1),
    wildcard_constraints:
        generator=one_of(TRAINED_GENERATORS),
    log:
        f"{LOGS}/train_generator/{{generator}}_subset{{subset}}.log",
    conda:
        ENV
    script:
        "../scripts/train_generator.py"


rule select_checkpoint:
    input:
        scores=f"{GEN}/checkpoint_scores.tsv",
    output:
        curve=f"{GEN}/fid_curve.tsv",
        choice=f"{GEN}/selected.json",
    params:
        code=code("select_checkpoint"),
        alpha=config["selection"]["alpha"],
        metric=config["selection"]["metric"],
    wildcard_constraints:
        generator=one_of(TRAINED_GENERATORS),
    log:
        f"{LOGS}/select_checkpoint/{{generator}}_subset{{subset}}.log",
    conda:
        ENV
    script:
        "../scripts/select_checkpoint.py"


rule generate:
    input:
        choice=f"{GEN}/selected.json",
        train=f"{RESULTS}/data/train.h5",
        subset=f"{RESULTS}/subsets/subset{{subset}}.npy",
    output:
        pool=f"{GEN}/pool.h5",
        grid=report(f"{GEN}/samples.png", category="Synthetic samples", subcategory="{generator}",
                    caption="../report/samples.rst", labels={"generator": "{generator}", "subset": "{subset}"}),
    params:
        code=lambda w: code("generate", w.generator),
        ratio=config["generation"]["ratio"],
        pool_factor=config["generation"]["pool_factor"],
        batch_size=config["generation"]["batch_size"],
        seed=config["generation"]["seed"],
        device=lambda w: GENERATORS[w.generator]["device"],
        sampling=lambda w: sampling_params(w.generator),
    threads: config["classifier"]["threads"]
    resources:
        gpu=lambda w: 0 if GENERATORS[w.generator]["device"] == "cpu" else 1,
    wildcard_constraints:
        generator=one_of(TRAINED_GENERATORS),
    log:
        f"{LOGS}/generate/{{generator}}_subset{{subset}}.log",
    conda:
        ENV
    script:
        "../scripts/generate.py"


# A synthetic set made elsewhere: pool_factor·r·N_i of its images per class (all when fewer),
# resized as the real data were (histosynth.data.external).
rule import_external:
    input:
        train=f"{RESULTS}/data/train.h5",
        subset=f"{RESULTS}/subsets/subset{{subset}}.npy",
    output:
        pool=f"{GEN}/pool.h5",
        grid=report(f"{GEN}/samples.png", category="Synthetic samples", subcategory="{generator}",
                    caption="../report/samples.rst", labels={"generator": "{generator}", "subset": "{subset}"}),
        sources=f"{GEN}/sources.tsv",
    params:
        code=code("import_external"),
        source=external_params,
        ratio=config["generation"]["ratio"],
        pool_factor=config["generation"]["pool_factor"],
        seed=config["generation"]["seed"],
    wildcard_constraints:
        generator=one_of(EXTERNAL_GENERATORS),
    log:
        f"{LOGS}/import_external/{{generator}}_subset{{subset}}.log",
    conda:
        ENV
    script:
        "../scripts/import_external.py"


# Is the selected snapshot near real-vs-real? Its first r·N_i pool images per class scored
# like the reference: `converged` in convergence.json flags tables, figures and the report.
rule pool_features:
    input:
        pool=f"{GEN}/pool.h5",
        extractor=f"{RESULTS}/feature_extractor/subset{{subset}}/model.pt",
    output:
        features=f"{GEN}/pool_features.npz",
    params:
        code=code("pool_features"),
        backbone=config["selection"]["backbone"],
        batch_size=config["selection"]["batch_size"],
        device=lambda w: GENERATORS[w.generator]["device"],
    threads: config["classifier"]["threads"]
    resources:
        gpu=lambda w: 0 if GENERATORS[w.generator]["device"] == "cpu" else 1,
    log:
        f"{LOGS}/pool_features/{{generator}}_subset{{subset}}.log",
    conda:
        ENV
    script:
        "../scripts/pool_features.py"


rule convergence:
    input:
        pool=f"{GEN}/pool.h5",
        pool_features=f"{GEN}/pool_features.npz",
        choice=f"{GEN}/selected.json",
        curve=f"{GEN}/fid_curve.tsv",
        reference=f"{RESULTS}/feature_extractor/subset{{subset}}/reference.json",
        train=f"{RESULTS}/data/train.h5",
        subset=f"{RESULTS}/subsets/subset{{subset}}.npy",
        stats=f"{RESULTS}/feature_extractor/subset{{subset}}/real_stats.npz",
    output:
        metrics=f"{GEN}/convergence.json",
        plot=report(f"{GEN}/fid_curve.png", category="Checkpoint selection", subcategory="{generator}",
                    caption="../report/fid_curve.rst", labels={"generator": "{generator}", "subset": "{subset}"}),
        memorisation=f"{GEN}/memorisation.tsv",  # every pool image's nearest training image (the audit)
    params:
        code=code("convergence"),
        converged=config["quality"]["converged"],
        quality=quality_params(),
        ratio=config["generation"]["ratio"],
        metric=config["selection"]["metric"],
        alpha=config["selection"]["alpha"],
    threads: config["classifier"]["threads"]
    log:
        f"{LOGS}/convergence/{{generator}}_subset{{subset}}.log",
    wildcard_constraints:
        generator=one_of(TRAINED_GENERATORS),
    conda:
        ENV
    script:
        "../scripts/convergence.py"


# An external set has no checkpoints: its pool is judged alone, without a curve.
use rule convergence as convergence_external with:
    input:
        pool=f"{GEN}/pool.h5",
        pool_features=f"{GEN}/pool_features.npz",
        reference=f"{RESULTS}/feature_extractor/subset{{subset}}/reference.json",
        train=f"{RESULTS}/data/train.h5",
        subset=f"{RESULTS}/subsets/subset{{subset}}.npy",
        stats=f"{RESULTS}/feature_extractor/subset{{subset}}/real_stats.npz",
    output:
        metrics=f"{GEN}/convergence.json",
        memorisation=f"{GEN}/memorisation.tsv",
    wildcard_constraints:
        generator=one_of(EXTERNAL_GENERATORS),
    log:
        f"{LOGS}/convergence/{{generator}}_subset{{subset}}.log",
