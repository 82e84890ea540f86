"""A real Snakemake run of a micro config: download (from a local mirror in PCam's
exact layout) -> prepare -> split -> train_classifier -> aggregate table; then the
invalidation and config-validation behaviour users rely on."""

import gzip
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from histosynth.data.store import read_store

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
PCAM = "camelyonpatch_level_2_split_{split}_{xy}.h5"


def write_pcam_mirror(root: Path, sizes={"train": 40, "valid": 12, "test": 12}) -> dict:
    """Gzipped HDF5 files named, keyed and shaped like Zenodo record 2546921.

    Returns the md5 of each decompressed .h5 (the checksum the download verifies).
    Tumour patches are redder than normal ones, so a classifier can learn a little.
    """
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    checksums = {}
    for split, n in sizes.items():
        y = np.tile([0, 1], n // 2).astype(np.uint8)
        x = rng.integers(0, 120, (n, 96, 96, 3)).astype(np.uint8)
        x[..., 0] += (100 * y).astype(np.uint8)[:, None, None]
        for xy, data in (("x", x), ("y", y.reshape(n, 1, 1, 1))):
            name = PCAM.format(split=split, xy=xy)
            with h5py.File(root / name, "w") as f:
                f.create_dataset(xy, data=data)
            raw = (root / name).read_bytes()
            checksums[name] = "md5:" + hashlib.md5(raw).hexdigest()
            (root / f"{name}.gz").write_bytes(gzip.compress(raw))
            (root / name).unlink()
    return checksums


def micro_config(tmp_path: Path, checksums: dict) -> dict:
    return {
        "resources_dir": str(tmp_path / "resources"),
        "results_dir": str(tmp_path / "results"),
        "allow_cpu": True,  # GPU jobs (the GANs' device is "auto") may run on a CPU-only machine
        "dataset": {"name": "pcam", "image_size": 32,
                    "download": {"base_url": (tmp_path / "mirror").as_uri(), "checksums": checksums}},
        "subsets": {"k": 1, "fraction": 0.5, "seed": 0},  # every generator-side job runs once
        "classifier": {"pretrained_weights": None, "epochs": 2, "batch_size": 8, "lr": 0.01,
                       "eval_batch_size": 16, "device": "cpu", "threads": 1},
        "strategies": ["baseline", "traditional"],
        "seeds": 2,  # 2 runs per strategy: mean ± std and 2 (subset, seed) pairs
        "generators": [],  # config.yaml (always read first) trains both GANs at paper size
        "selection": {"inception_weights": None},
    }


def snakemake_command(workdir: Path, config: dict, *args, repo=REPO) -> list[str]:
    cfg = workdir / "micro.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return [*SNAKEMAKE, "--snakefile", str(repo / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(cfg), "--cores", "2", *args]


def snakemake(workdir: Path, config: dict, *args, check=True, repo=REPO):
    cmd = snakemake_command(workdir, config, *args, repo=repo)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def scheduled_jobs(proc) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run into {rule: count}."""
    out = proc.stdout + proc.stderr
    if "Nothing to be done" in out:
        return {}
    block = out.split("Job stats:")[1]
    jobs = {}
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        jobs[m[1]] = int(m[2])
    jobs.pop("total", None)
    jobs.pop("all", None)  # the target rule itself, always listed
    return jobs


def finished_micro_run(tmp: Path) -> tuple[Path, dict]:
    """The micro config run to the end in `tmp` (a module's shared starting point)."""
    config = micro_config(tmp, write_pcam_mirror(tmp / "mirror"))
    snakemake(tmp, config)
    return tmp, config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return finished_micro_run(tmp_path_factory.mktemp("micro"))


@pytest.mark.slow
def test_micro_run_produces_the_table(finished_run):
    tmp, config = finished_run
    tables = tmp / "results/pcam/tables"
    table = pd.read_csv(tables / "classification.tsv", sep="\t", index_col="strategy")
    assert list(table.index) == ["baseline", "traditional"]
    assert (table["n"] == 2).all()  # 1 subset x 2 seeds
    for m in ("accuracy", "auc", "sensitivity", "specificity"):
        assert table[f"{m}_mean"].between(0, 1).all()
    md = (tables / "classification.md").read_text()
    assert "| Baseline |" in md and "±" in md
    assert (tables / "classification.tex").exists()
    assert "<table" in (tables / "classification.html").read_text()
    runs = pd.read_csv(tables / "classification_runs.tsv", sep="\t")
    assert len(runs) == 4 and set(runs["strategy"]) == {"baseline", "traditional"}
    # Raw data landed under resources/<dataset>/ with the original names, .gz gone.
    raw = sorted(p.name for p in (tmp / "resources/pcam").iterdir())
    assert raw == sorted(PCAM.format(split=s, xy=xy) for s in ("train", "valid", "test") for xy in "xy")
    counts = pd.read_csv(tmp / "results/pcam/data/patch_counts.tsv", sep="\t")
    assert counts["count"].sum() == 64


@pytest.mark.slow
def test_classifier_setting_reruns_only_classifiers_and_table(finished_run):
    tmp, config = finished_run
    assert scheduled_jobs(snakemake(tmp, config, "-n")) == {}
    changed = {**config, "classifier": {**config["classifier"], "lr": 0.02}}
    assert scheduled_jobs(snakemake(tmp, changed, "-n")) == {"train_classifier": 4, "aggregate": 1}
    # Augmentation only matters to `traditional`: baseline jobs stay cached.
    changed = {**config, "augmentation": {"hue": 0.1}}
    assert scheduled_jobs(snakemake(tmp, changed, "-n")) == {"train_classifier": 2, "aggregate": 1}
    changed = {**config, "subsets": {**config["subsets"], "seed": 1}}
    assert scheduled_jobs(snakemake(tmp, changed, "-n")) == {"split": 1, "train_classifier": 4, "aggregate": 1}
    # A dataset option: preparation onward, never the download.
    changed = {**config, "dataset": {**config["dataset"], "image_size": 24}}
    assert scheduled_jobs(snakemake(tmp, changed, "-n")) == {"prepare": 1, "split": 1, "train_classifier": 4,
                                                             "aggregate": 1}


@pytest.mark.slow
def test_another_mirror_of_the_same_files_reruns_nothing(finished_run, tmp_path):
    tmp, config = finished_run
    (tmp_path / "elsewhere").symlink_to(tmp / "mirror")
    moved = {**config, "dataset": {**config["dataset"], "download": {**config["dataset"]["download"],
                                                                    "base_url": (tmp_path / "elsewhere").as_uri()}}}
    assert scheduled_jobs(snakemake(tmp, moved, "-n")) == {}
    # Other content (a checksum changed) is another dataset: fetched again, and everything after.
    checksums = dict(config["dataset"]["download"]["checksums"])
    name = next(iter(checksums))
    checksums[name] = "md5:" + "0" * 32
    changed = {**config, "dataset": {**config["dataset"], "download": {**config["dataset"]["download"],
                                                                      "checksums": checksums}}}
    jobs = scheduled_jobs(snakemake(tmp, changed, "-n"))
    assert jobs.get("download") == 1 and jobs.get("prepare") == 1, jobs


@pytest.mark.slow
def test_adding_a_seed_schedules_only_new_jobs(finished_run):
    tmp, config = finished_run
    assert scheduled_jobs(snakemake(tmp, {**config, "seeds": 3}, "-n")) == {"train_classifier": 2, "aggregate": 1}


GAN_MICRO = {
    "generators": ["histogan"],
    "generator": {"histogan": {"model": {"g_channels": 4, "d_channels": 4, "d_max_mult": 2, "z_dim": 8,
                                         "g_up_blocks": 2, "g_res_blocks": 1, "mbd_kernels": 2,
                                         "mbd_kernel_dim": 2},
                               "epochs": 3, "batch_size": 10, "save_from": 0, "device": "cpu", "threads": 1}},
    "selection": {"backbone": "resnet18", "extractor": {"epochs": 1, "batch_size": 8, "lr": 0.01}, "images_per_class": 4, "batch_size": 8,
                  "inception_weights": None},
    "generation": {"batch_size": 8},
    # Two filters keep the micro run short; tests/test_filtering.py runs every filter.
    "filters": ["none", "selective"],
    "filtering": {"batch_size": 8, "realism_threshold": 0.0, "confidence_threshold": 0.0},  # untrained GAN
    "quality": {"kid_subsets": 5, "max_points": 50},
}


@pytest.mark.slow
def test_generator_branch_and_alpha_reruns_only_selection_onward(finished_run):
    tmp, config = finished_run
    config = {**config, **GAN_MICRO}
    snakemake(tmp, config)
    gen = tmp / "results/pcam/generators/histogan/subset0"
    assert json.loads((gen / "selected.json").read_text())["epoch"] in (1, 2, 3)
    images, labels, _ = read_store(gen / "pool.h5")
    # 4 r N_i per class: subset 0 holds 10 images of each class, r = 0.5.
    assert np.bincount(labels).tolist() == [20, 20] and images.shape[1:] == (32, 32, 3)
    # Every filter keeps r N_i = 5 per class; the quality table has one row per filter.
    for name in GAN_MICRO["filters"]:
        _, kept, _ = read_store(gen / f"filters/{name}/selected.h5")
        assert np.bincount(kept).tolist() == [5, 5], name
        assert (gen / f"filters/{name}/feature_map.png").read_bytes()[:4] == b"\x89PNG"
    quality = pd.read_csv(tmp / "results/pcam/tables/quality.tsv", sep="\t", keep_default_na=False)
    rows = ["real"] + ["histogan"] * len(GAN_MICRO["filters"])  # reference row first: overall, then per class
    assert list(zip(quality["class"], quality.generator)) == [(c, g) for c in ("", "normal", "tumor") for g in rows]
    verdict = json.loads((gen / "convergence.json").read_text())
    assert verdict["epoch"] == json.loads((gen / "selected.json").read_text())["epoch"]
    assert isinstance(verdict["converged"], bool) and verdict["pool"]["n_fake"] == 10  # r N_i per class
    assert (gen / "fid_curve.png").read_bytes()[:4] == b"\x89PNG"
    reference = json.loads((tmp / "results/pcam/feature_extractor/subset0/reference.json").read_text())
    assert reference["kept"]["counts"] == {"0": 5, "1": 5} and reference["scoring"]["counts"] == {"0": 4, "1": 4}
    # The memorisation audit: thresholds from every validation image; every pool and kept image traced
    # to its nearest training image; the copy rate in the verdict, the quality file and the table.
    assert set(reference["memorisation"]["thresholds"]) == {"domain", "pixel"} and reference["memorisation"]["n_valid"] > 0
    pool_audit = pd.read_csv(gen / "memorisation.tsv", sep="\t")
    assert len(pool_audit) == 40 and pool_audit.pixel_index.between(0, 19).all()  # 20 training images
    assert verdict["memorisation"]["n"] == 40 and 0 <= verdict["memorisation"]["copy_rate"] <= 1
    for name in GAN_MICRO["filters"]:
        kept_audit = pd.read_csv(gen / f"filters/{name}/memorisation.tsv", sep="\t")
        assert len(kept_audit) == 10 and set(kept_audit["class"]) == {"normal", "tumor"}
        q = json.loads((gen / f"filters/{name}/quality.json").read_text())
        assert q["memorisation"]["n_copies"] == kept_audit["copy"].sum() and len(q["memorisation"]["closest"]) == 8
        assert set(q["per_class"]) == {"normal", "tumor"} and q["per_class"]["tumor"]["domain"]["n_fake"] == 5
        assert (gen / f"filters/{name}/closest_pairs.png").read_bytes()[:4] == b"\x89PNG"
    assert quality["memorisation_copies_mean"].notna().all()
    # The verdict's thresholds rerun the verdicts and the table only.
    changed = {**config, "quality": {**config["quality"], "converged": {"max_fid_ratio": 4}}}
    assert scheduled_jobs(snakemake(tmp, changed, "-n")) == {"convergence": 1, "quality_table": 1}
    # A filter setting reruns that filter only (and the table); one no filter reads, nothing.
    changed = {**config, "filtering": {**config["filtering"], "mc_passes": 3}}
    assert scheduled_jobs(snakemake(tmp, changed, "-n")) == {"filter": 1, "quality": 1, "quality_table": 1}
    changed = {**config, "filtering": {**config["filtering"], "confidence_threshold": 0.2}}
    assert scheduled_jobs(snakemake(tmp, changed, "-n")) == {}
    changed = {**config, "filters": [*config["filters"], "realism_class"]}
    assert scheduled_jobs(snakemake(tmp, changed, "-n")) == {"filter": 1, "quality": 1, "quality_table": 1}
    changed = {**config, "selection": {**config["selection"], "alpha": 0.9}}
    downstream = {"generate": 1, "pool_features": 1, "filter": 2, "quality": 2, "quality_table": 1, "convergence": 1}
    assert scheduled_jobs(snakemake(tmp, changed, "-n")) == {"select_checkpoint": 1, **downstream}
    changed = {**config, "generation": {**config["generation"], "seed": 3}}
    assert scheduled_jobs(snakemake(tmp, changed, "-n")) == downstream
    changed = {**config, "selection": {**config["selection"], "metric": "kid"}}
    assert scheduled_jobs(snakemake(tmp, changed, "-n")) == {"select_checkpoint": 1, **downstream}
    # Dropping in pytorch-fid's weights adds Inception statistics and a feature space that training
    # scores its snapshots in (it keeps only those a selection could choose): the generator retrains.
    weights = tmp / "pt_inception.pth"
    weights.write_bytes(b"stand-in: a dry run only checks that the file exists")
    changed = {**config, "selection": {**config["selection"], "inception_weights": str(weights)}}
    assert scheduled_jobs(snakemake(tmp, changed, "-n")) == {
        "inception_stats": 1, "reference_quality": 1, "train_generator": 1, "select_checkpoint": 1, **downstream}
    # exclude_copies reruns every filter and what reads it; each then drops the audit's likely copies.
    changed = {**config, "filtering": {**config["filtering"], "exclude_copies": True}}
    assert scheduled_jobs(snakemake(tmp, changed, "-n")) == {"filter": 2, "quality": 2, "quality_table": 1}
    snakemake(tmp, changed)
    for name in GAN_MICRO["filters"]:
        summary = json.loads((gen / f"filters/{name}/summary.json").read_text())
        assert summary["copies_excluded"] >= 0 and summary["kept"] == {"normal": 5, "tumor": 5}
    # A lab's own encoder (a TorchScript file): checked at start-up, then one more feature space.
    missing = {**config, "quality": {**config["quality"], "encoders": {"lab": {"path": str(tmp / "none.pt")}}}}
    proc = snakemake(tmp, missing, "-n", check=False)
    assert proc.returncode != 0 and "quality.encoders.lab.path" in proc.stdout + proc.stderr
    from test_encoders import scripted

    encoder = {"lab": {"path": str(scripted(tmp)), "image_size": 32}}
    with_encoder = {**changed, "quality": {**config["quality"], "encoders": encoder}}
    assert scheduled_jobs(snakemake(tmp, with_encoder, "-n")) == {
        "encoder_stats": 1, "reference_quality": 1, "train_generator": 1, "select_checkpoint": 1, **downstream}
    snakemake(tmp, with_encoder)
    scores = pd.read_csv(gen / "checkpoint_scores.tsv", sep="\t")
    assert {"fd_lab", "kid_lab", "precision_lab", "recall_lab"} <= set(scores.columns)
    q = json.loads((gen / f"filters/{GAN_MICRO['filters'][0]}/quality.json").read_text())
    assert q["lab"]["n_real"] == 20 and set(q["per_class"]["normal"]) == {"domain", "lab"}
    assert "FD lab" in (tmp / "results/pcam/tables/quality.md").read_text().splitlines()[0]


SYNTHETIC_STRATEGIES = ["augment", "transfer", "synthetic_only"]


@pytest.mark.slow
def test_synthetic_strategies_tables_figures_and_report(finished_run):
    tmp, config = finished_run
    config = {**config, **GAN_MICRO, "strategies": ["baseline", "traditional", *SYNTHETIC_STRATEGIES],
              "filters": ["selective"]}
    snakemake(tmp, config)
    results = tmp / "results/pcam"
    transfer = json.loads((results / "classifier/transfer/histogan/selective/subset0/seed0/metrics.json").read_text())
    # Subset 0 holds 10 real images per class; the filter kept r N_i = 5 per class.
    assert transfer["n_train"] == {"synthetic": 10, "real": 20}
    assert (transfer["generator"], transfer["filter"]) == ("histogan", "selective")
    table = pd.read_csv(results / "tables/classification.tsv", sep="\t", keep_default_na=False)
    assert list(zip(table["strategy"], table["generator"])) == [
        ("baseline", ""), ("traditional", ""), *[(s, "histogan") for s in SYNTHETIC_STRATEGIES]]
    assert (table["n"] == 2).all() and (table["n_pairs"][2:].astype(int) == 2).all()
    for figure in ("auc_by_strategy", "synthetic_only_auc"):
        assert (results / f"figures/{figure}.png").read_bytes()[:4] == b"\x89PNG"
    # One more seed, or one more filter: only the new runs, their filter branch and the summaries.
    summaries = {"aggregate": 1, "plot_auc_by_strategy": 1, "plot_synthetic_only_auc": 1}
    assert scheduled_jobs(snakemake(tmp, {**config, "seeds": 3}, "-n")) == {
        "train_classifier": 2, "train_classifier_synthetic": 3, **summaries}
    # `histogan`, the filter's old name, is `selective`: only realism_class is new.
    assert scheduled_jobs(snakemake(tmp, {**config, "filters": ["histogan", "realism_class"]}, "-n")) == {
        "filter": 1, "quality": 1, "quality_table": 1, "train_classifier_synthetic": 6, **summaries}
    # The HTML report: every table and figure with its caption.
    snakemake(tmp, config, "--report", str(tmp / "report.html"))
    report = (tmp / "report.html").read_text()
    for needle in ("classification.html", "quality.html", "auc_by_strategy.png", "synthetic_only_auc.png",
                   "fid_curve.png", "samples.png", "feature_map.png"):
        assert needle in report, needle
    for caption in ("paired t-test", "Fig. 5", "Fig. 6", "before any filtering", "Checkpoint selection for"):
        assert caption in report, caption


@pytest.mark.slow
def test_plan_counts_the_jobs_and_bytes_a_run_writes(finished_run):
    """`make plan` (histosynth.plan) against the real micro run: its jobs are the dry run's,
    its disk figures the files the stages wrote (what a paper-scale plan extrapolates from)."""
    from histosynth import plan

    tmp, config = finished_run
    config = {**config, **GAN_MICRO, "strategies": ["baseline", "traditional", *SYNTHETIC_STRATEGIES],
              "filters": ["selective"]}
    snakemake(tmp, config)  # nothing to do after the test above; the whole branch otherwise
    cfg = tmp / "micro.yaml"
    resolved = plan.resolved_config([cfg])
    jobs = plan.dry_run_jobs([cfg], workdir=tmp)
    table = yaml.safe_load(plan.TABLE.read_text())
    rows, disk = plan.plan(resolved, jobs, table, workdir=tmp)
    assert {r["rule"]: r["jobs"] for r in rows} == scheduled_jobs(snakemake(tmp, config, "-n", "--forceall"))
    results = tmp / "results/pcam"
    weights = sum(p.stat().st_size for p in results.glob("classifier/**/model.pt"))
    assert weights > 0 and disk["classifier weights (model.pt per run)"][0] == pytest.approx(weights, rel=0.02)
    # Snapshots: the plan's file size is the real files', and its count (metrics x alphas, two
    # more while training runs) bounds what the run kept and the most it held at once.
    gen = results / "generators/histogan/subset0"
    snapshots = sorted(gen.glob("checkpoints/epoch_*.pt"))
    size = plan.costs(resolved, plan.split_sizes(resolved, tmp), table)["histogan"]["snapshot_bytes"]
    assert snapshots and all(p.stat().st_size == pytest.approx(size, rel=0.02) for p in snapshots)
    final, peak = disk["generator snapshots"]
    on_disk = pd.read_csv(gen / "losses.tsv", sep="\t")["snapshots_on_disk"]
    assert len(snapshots) * size <= final * 1.02 and on_disk.max() * size <= peak * 1.02
    with h5py.File(gen / "pool.h5") as f:
        assert disk["pools"] == (f["images"].size, f["images"].size)
    stores = 0
    for split in ("train", "valid", "test"):
        with h5py.File(results / f"data/{split}.h5") as f:
            stores += f["images"].size
    assert disk["image stores (train, valid, test)"][0] == stores
    # Time: every modelled stage costs something, the GPU stages on the GPU (device auto).
    by_rule = {r["rule"]: r for r in rows}
    assert by_rule["train_generator"]["cpu_h"] > 0 and by_rule["train_classifier"]["cpu_h"] > 0


def test_plan_of_the_paper_protocol_needs_no_torch():
    """config.yaml's models are in workflow/throughput.yaml: its plan reads them (seconds, no torch),
    and a changed default model (a new key) fails here until the table is regenerated."""
    code = ("import sys, yaml; from histosynth import plan; c = plan.resolved_config([]); "
            "t = yaml.safe_load(plan.TABLE.read_text()); s = plan.split_sizes(c); k = plan.costs(c, s, t); "
            "assert 'torch' not in sys.modules, 'counted the costs again'; print(sorted(k))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "histogan" in out.stdout and "vitgan" in out.stdout


def test_the_paper_protocol_holds_at_most_150_gb_of_snapshots():
    """Issue 17.1: every generator of config.yaml on its 5 subsets, at the papers' snapshot cadence,
    holds at most 150 GB of snapshots at any moment: per run, the snapshot file's size (the
    model as config.yaml builds it, written as training writes it) x the most it can keep
    (selectable metrics x alphas + 2), whatever its curves. The micro run's files and counts
    are checked against the same formula in test_plan_counts_the_jobs_and_bytes_a_run_writes."""
    from histosynth import plan

    config = plan.resolved_config([])
    jobs = [("train_generator", {"generator": g, "subset": str(k)}) for g in config["generators"]
            for k in range(config["subsets"]["k"])]
    _, disk = plan.plan(config, jobs, yaml.safe_load(plan.TABLE.read_text()))
    final, peak = disk["generator snapshots"]
    assert len(jobs) == 25 and final <= peak <= 150e9


@pytest.mark.parametrize("text,needle", [(None, "No such file"), ("generator: {histogan: {model: {z_dimm: 3}}}",
                                                                      "unknown key 'z_dimm'")])
def test_plan_of_a_bad_config_says_what_in_one_line(tmp_path, text, needle):
    cfg = tmp_path / "my.yaml"
    if text is not None:
        cfg.write_text(text)
    out = subprocess.run([sys.executable, "-m", "histosynth.plan", "--configfile", str(cfg)], capture_output=True,
                         text=True, cwd=REPO)
    assert out.returncode != 0 and needle in out.stderr and "Traceback" not in out.stderr


def test_synthetic_strategies_without_a_generator_are_a_config_error(tmp_path):
    config = {**micro_config(tmp_path, {}), "strategies": ["baseline", "augment"]}
    proc = snakemake(tmp_path, config, "-n", check=False)
    assert proc.returncode != 0 and "need at least one entry in `generators`" in proc.stdout + proc.stderr


def test_inception_metric_without_weights_is_a_config_error(tmp_path):
    config = {**micro_config(tmp_path, {}), **GAN_MICRO}
    config["selection"] = {**config["selection"], "metric": "fid_inception",
                           "inception_weights": str(tmp_path / "absent.pth")}
    proc = snakemake(tmp_path, config, "-n", check=False)
    assert proc.returncode != 0 and "inception_weights" in proc.stdout + proc.stderr


@pytest.mark.parametrize("override,needle", [
    ({"bogus_key": 1}, "bogus_key"),
    ({"dataset": {"name": "imagenet"}}, "imagenet"),
    ({"classifier": {"lr": -1}}, "lr"),
    ({"strategies": ["baseline", "magic"]}, "magic"),
    ({"dataset": {"name": "pcam", "options": {"patch_size": 64}}}, "patch_size"),
])
def test_bad_config_is_rejected_before_any_job(tmp_path, override, needle):
    proc = snakemake(tmp_path, {**micro_config(tmp_path, {}), **override}, "-n", check=False)
    assert proc.returncode != 0
    assert needle in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_checksum_mismatch_fails_the_download_cleanly(tmp_path):
    write_pcam_mirror(tmp_path / "mirror", sizes={"train": 4, "valid": 2, "test": 2})
    wrong = {PCAM.format(split=s, xy=xy): "md5:" + "0" * 32 for s in ("train", "valid", "test") for xy in "xy"}
    proc = snakemake(tmp_path, micro_config(tmp_path, wrong), "download", check=False)
    assert proc.returncode != 0
    assert "md5" in proc.stdout + proc.stderr
    leftovers = [p.name for p in (tmp_path / "resources/pcam").glob("*.h5")]
    assert leftovers == []


def test_lint_is_clean(tmp_path):
    proc = snakemake(tmp_path, micro_config(tmp_path, {}), "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
