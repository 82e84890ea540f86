# Per (generator, subset, filter): pick r·N_i images per class from the pool, then
# measure their quality against the real subset; one table over everything.

FILT = f"{GEN}/filters/{{filter}}"


rule filter:
    input:
        unpack(copy_thresholds),
        unpack(selected_snapshot),
        pool=f"{GEN}/pool.h5",
        pool_features=f"{GEN}/pool_features.npz",
        train=f"{RESULTS}/data/train.h5",
        subset=f"{RESULTS}/subsets/subset{{subset}}.npy",
        extractor=f"{RESULTS}/feature_extractor/subset{{subset}}/model.pt",
        stats=f"{RESULTS}/feature_extractor/subset{{subset}}/real_stats.npz",
    output:
        selected=f"{FILT}/selected.h5",
        summary=f"{FILT}/summary.json",
    params:
        code=lambda w: code("filter", w.generator),
        cfg=lambda w: filter_params(w.filter),
        backbone=config["selection"]["backbone"],
        device=lambda w: GENERATORS[w.generator]["device"],
        # Only the threshold filters generate beyond the pool (an external set's cannot).
        sampling=lambda w: sampling_params(w.generator) if FILTERS[w.filter].draws else {},
    threads: config["classifier"]["threads"]
    resources:
        gpu=lambda w: 0 if GENERATORS[w.generator]["device"] == "cpu" else 1,
    log:
        f"{LOGS}/filter/{{generator}}_subset{{subset}}_{{filter}}.log",
    conda:
        ENV
    script:
        "../scripts/filter.py"


rule quality:
    input:
        unpack(inception_inputs),
        unpack(encoder_inputs),
        selected=f"{FILT}/selected.h5",
        pool=f"{GEN}/pool.h5",
        pool_features=f"{GEN}/pool_features.npz",
        extractor=f"{RESULTS}/feature_extractor/subset{{subset}}/model.pt",
        stats=f"{RESULTS}/feature_extractor/subset{{subset}}/real_stats.npz",
        train=f"{RESULTS}/data/train.h5",
        subset=f"{RESULTS}/subsets/subset{{subset}}.npy",  # the real features' labels: per-class metrics
        reference=f"{RESULTS}/feature_extractor/subset{{subset}}/reference.json",  # the copy thresholds
    output:
        metrics=f"{FILT}/quality.json",
        plot=report(f"{FILT}/feature_map.png", category="Synthetic image quality", subcategory="{generator}",
                    caption="../report/feature_map.rst",
                    labels={"generator": "{generator}", "subset": "{subset}", "filter": "{filter}"}),
        memorisation=f"{FILT}/memorisation.tsv",
        pairs=report(f"{FILT}/closest_pairs.png", category="Memorisation audit", subcategory="{generator}",
                     caption="../report/closest_pairs.rst",
                     labels={"generator": "{generator}", "subset": "{subset}", "filter": "{filter}"}),
    params:
        code=code("quality"),
        encoders=ENCODERS,
        quality=quality_params(),
        max_points=config["quality"]["max_points"],
        backbone=config["selection"]["backbone"],
        batch_size=config["selection"]["batch_size"],
        device=lambda w: GENERATORS[w.generator]["device"],
    threads: config["classifier"]["threads"]
    resources:
        gpu=lambda w: 0 if GENERATORS[w.generator]["device"] == "cpu" else 1,
    log:
        f"{LOGS}/quality/{{generator}}_subset{{subset}}_{{filter}}.log",
    conda:
        ENV
    script:
        "../scripts/quality.py"


rule quality_table:
    input:
        metrics=expand(
            f"{RESULTS}/generators/{{generator}}/subset{{subset}}/filters/{{filter}}/quality.json",
            generator=config["generators"],
            subset=SUBSETS,
            filter=config["filters"],
        ),
        references=expand(f"{RESULTS}/feature_extractor/subset{{subset}}/reference.json", subset=SUBSETS),
        convergence=expand(f"{RESULTS}/generators/{{generator}}/subset{{subset}}/convergence.json",
                           generator=config["generators"], subset=SUBSETS),
        vae=expand(f"{RESULTS}/vae/subset{{subset}}/quality.json", subset=SUBSETS if LATENT_GENERATORS else []),
    output:
        tsv=f"{RESULTS}/tables/quality.tsv",
        md=f"{RESULTS}/tables/quality.md",
        tex=f"{RESULTS}/tables/quality.tex",
        html=report(f"{RESULTS}/tables/quality.html", category="Synthetic image quality",
                    caption="../report/quality_table.rst", labels={"result": "quality table"}),
    params:
        code=code("quality_table"),
        generators=config["generators"],
        filters=config["filters"],
        latent_generators=LATENT_GENERATORS,
    log:
        f"{LOGS}/quality_table.log",
    conda:
        ENV
    script:
        "../scripts/quality_table.py"
