"""Real Snakemake micro runs of the generator branches: latent diffusion and what its
settings rerun, code edits, a killed and a diverging training job, the unified strategy,
external synthetic sets beside a trained generator.

A file of its own (with its own finished micro run) so `make test` runs it beside
tests/test_workflow.py on the second core.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from histosynth.data.store import read_store
from test_workflow import GAN_MICRO, REPO, finished_micro_run, scheduled_jobs, snakemake, snakemake_command


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return finished_micro_run(tmp_path_factory.mktemp("micro_generators"))


LDM_MICRO = {
    "generators": ["histogan", "ldm_dit"],
    "generator": {"histogan": GAN_MICRO["generator"]["histogan"],
                  "ldm_dit": {"model": {"patch_size": 2, "hidden_size": 32, "depth": 1, "num_heads": 2},
                              "epochs": 2, "batch_size": 10, "save_from": 0, "save_every": 1, "device": "cpu",
                              "threads": 1,
                              "diffusion": {"timesteps": 50, "ema_decay": 0.9}, "sampling": {"steps": 3}}},
    "vae": {"model": {"base_channels": 8, "channel_mults": [1, 2, 4], "mid_attention": False},
            "epochs": 1, "batch_size": 10, "device": "cpu", "threads": 1},
    "selection": GAN_MICRO["selection"],
    "generation": GAN_MICRO["generation"],
    "filters": ["none"],
    "filtering": GAN_MICRO["filtering"],
    "quality": GAN_MICRO["quality"],
}


@pytest.mark.slow
def test_latent_diffusion_branch_and_what_its_settings_rerun(finished_run):
    tmp, config = finished_run
    config = {**config, **LDM_MICRO}
    snakemake(tmp, config)
    results = tmp / "results/pcam"
    assert json.loads((results / "vae/subset0/metrics.json").read_text())["latent_shape"] == [4, 8, 8]
    images, labels, _ = read_store(results / "generators/ldm_dit/subset0/pool.h5")
    assert np.bincount(labels).tolist() == [20, 20] and images.shape[1:] == (32, 32, 3)
    # The VAE bound: its reconstructions of the reference's validation draw (r N_i = 5 per class).
    assert json.loads((results / "vae/subset0/quality.json").read_text())["domain"]["n_fake"] == 10
    assert "VAE rec. FID" in (results / "tables/quality.md").read_text()
    # The sampler retrains the denoiser (training scores its snapshots with it), as does the VAE;
    # neither touches the classifiers.
    sampling = {**config, "generator": {**config["generator"],
                                        "ldm_dit": {**LDM_MICRO["generator"]["ldm_dit"], "sampling": {"steps": 5}}}}
    downstream = {"generate": 1, "pool_features": 1, "filter": 1, "quality": 1, "quality_table": 1, "convergence": 1}
    branch = {"train_generator": 1, "select_checkpoint": 1, **downstream}
    assert scheduled_jobs(snakemake(tmp, sampling, "-n")) == branch
    vae = {**config, "vae": {**LDM_MICRO["vae"], "epochs": 2}}
    assert scheduled_jobs(snakemake(tmp, vae, "-n")) == {"train_vae": 1, "vae_quality": 1, **branch}
    # One generator's epochs: its branch only, never HistoGAN's beside it.
    epochs = {**config, "generator": {**config["generator"], "ldm_dit": {**LDM_MICRO["generator"]["ldm_dit"],
                                                                         "epochs": 3}}}
    assert scheduled_jobs(snakemake(tmp, epochs, "-n")) == branch


def _edited_copy(dest: Path, module: str, text: str) -> Path:
    """The workflow and package copied to `dest`, with `text` appended to src/histosynth/<module>.py."""
    for name in ("workflow", "src"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Snakefile", "config.yaml", "profiles"):
        shutil.copy(REPO / name, dest / name, follow_symlinks=False)
    path = dest / "src/histosynth" / f"{module}.py"
    path.write_text(path.read_text() + text)
    return dest


@pytest.mark.slow
def test_editing_a_stages_code_reruns_that_stage_onward(finished_run):
    """Runs after the latent-diffusion test, on its finished DAG (HistoGAN and DiT branches)."""
    tmp, config = finished_run
    config = {**config, **LDM_MICRO}
    dit_branch = {"train_generator": 1, "select_checkpoint": 1, "generate": 1, "filter": 1,
                  "pool_features": 1, "quality": 1, "quality_table": 1, "convergence": 1}
    edited = _edited_copy(tmp / "dit_edit", "generative/models/dit", "\nEDITED = True\n")
    assert scheduled_jobs(snakemake(tmp, config, "-n", repo=edited)) == dit_branch
    # generative/models/vae.py is imported by no script: train_vae reaches it through vae_training, the
    # DiT's jobs through ldm. Its edit reruns the VAE and the DiT branch, never HistoGAN's.
    edited = _edited_copy(tmp / "vae_edit", "generative/models/vae", "\nEDITED = True\n")
    assert scheduled_jobs(snakemake(tmp, config, "-n", repo=edited)) == {"train_vae": 1, "vae_quality": 1,
                                                                         **dit_branch}
    edited = _edited_copy(tmp / "aggregate_edit", "reporting/aggregate", "\nEDITED = True\n")
    assert scheduled_jobs(snakemake(tmp, config, "-n", repo=edited)) == {"aggregate": 1}
    # Comments and docstrings change nothing the code does: nothing reruns.
    edited = _edited_copy(tmp / "comment_edit", "generative/training", "\n# a reworded comment\n")
    assert scheduled_jobs(snakemake(tmp, config, "-n", repo=edited)) == {}
    # Nor in a rule's script, although its file is now newer than every output (Snakemake's
    # own `code` trigger would rerun the whole DAG from `prepare`, and refetch the download).
    script = edited / "workflow/scripts/prepare.py"
    script.write_text(script.read_text() + "\n# a reworded comment\n")
    assert scheduled_jobs(snakemake(tmp, config, "-n", repo=edited)) == {}


@pytest.mark.slow
def test_a_killed_training_resumes_and_a_diverging_branch_fails_alone(finished_run):
    """SIGKILL mid-training, then snakemake again: the job resumes from its last epoch and ends
    exactly where an uninterrupted run does. A generator that diverges fails with the epoch
    named while the branch beside it finishes (--keep-going)."""
    tmp, config = finished_run
    same = {"family": "histogan", "epochs": 12}  # identical runs under two names
    config = {**config, **GAN_MICRO, "generators": ["histogan_ref", "histogan_kill", "histogan_nan"],
              "generator": {"histogan": GAN_MICRO["generator"]["histogan"], "histogan_ref": same,
                            "histogan_kill": same, "histogan_nan": {"family": "histogan", "lr": 1e30}}}
    gen = tmp / "results/pcam/generators"

    def losses(name):
        return str(gen / name / "subset0/losses.tsv")

    proc = snakemake(tmp, config, losses("histogan_ref"), losses("histogan_nan"), "--keep-going", check=False)
    assert proc.returncode != 0 and Path(losses("histogan_ref")).is_file()
    assert not Path(losses("histogan_nan")).exists()
    assert "diverged at epoch 1" in (tmp / "results/pcam/logs/train_generator/histogan_nan_subset0.log").read_text()

    job = subprocess.Popen(snakemake_command(tmp, config, losses("histogan_kill")), start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp / "results/pcam/logs/train_generator/histogan_kill_subset0.log"
    while "epoch=4 " not in (log.read_text() if log.exists() else "") and job.poll() is None:
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)  # Snakemake and its job, as a node failure would
    job.wait()
    assert not Path(losses("histogan_kill")).exists()  # nothing that looks finished
    snakemake(tmp, config, "--unlock")
    snakemake(tmp, config, losses("histogan_kill"))
    log = (tmp / "results/pcam/logs/train_generator/histogan_kill_subset0.log").read_text()
    resumed = re.search(r"resuming after epoch (\d+)", log)
    assert resumed and 3 <= int(resumed[1]) < 12, log[-2000:]  # killed during epoch 4 or 5
    ref, killed = (pd.read_csv(losses(g), sep="\t").drop(columns="seconds") for g in ("histogan_ref", "histogan_kill"))
    pd.testing.assert_frame_equal(ref, killed)
    # The same scores, the same snapshots kept, bit for bit.
    scores = [(gen / g / "subset0/checkpoint_scores.tsv").read_text() for g in ("histogan_ref", "histogan_kill")]
    assert scores[0] == scores[1]
    kept = [sorted(p.name for p in (gen / g / "subset0/checkpoints").glob("epoch_*.pt"))
            for g in ("histogan_ref", "histogan_kill")]
    assert kept[0] == kept[1] and kept[0]
    for name in kept[0]:
        final = [torch.load(gen / g / "subset0/checkpoints" / name, weights_only=True)["G"]
                 for g in ("histogan_ref", "histogan_kill")]
        assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])


VITGAN_MICRO = {"model": {"z_dim": 16, "embed_dim": 256, "depth": 1, "num_heads": 2, "d_embed_dim": 32,
                          "d_patch_size": 2},
                "epochs": 2, "batch_size": 10, "save_from": 0, "save_every": 1, "device": "cpu", "threads": 1}


@pytest.mark.slow
def test_unified_strategy_with_a_named_variant(finished_run):
    """The critic's class head as a classifier, for an ablation variant of the ViT-cGAN."""
    tmp, config = finished_run
    config = {**config, **GAN_MICRO, "strategies": ["baseline", "traditional", "unified"],
              "generators": ["vitgan_sa"], "filters": ["none"],
              "generator": {"vitgan": VITGAN_MICRO,
                            "vitgan_sa": {"family": "vitgan", "model": {"class_projection": False}}}}
    results = tmp / "results/pcam"
    table = str(results / "tables/classification.tsv")  # the unified rows need no pool or filter
    snakemake(tmp, config, table)
    metrics = json.loads((results / "classifier/unified/vitgan_sa/subset0/metrics.json").read_text())
    # The variant trained with its family's settings and its own switch merged over them.
    assert metrics["components"] == {"class_projection": False, "selective": True}
    assert metrics["subset"].endswith("subset0.npy") and metrics["best_epoch"] in (1, 2)
    rows = pd.read_csv(table, sep="\t", keep_default_na=False)
    assert list(zip(rows["strategy"], rows["generator"]))[-1] == ("unified", "vitgan_sa")
    assert int(rows["n_pairs"].iloc[-1]) == 1  # one critic per subset
    assert "ViT-cGAN SA class head" in (results / "tables/classification.md").read_text()
    # The checkpoint criterion reruns the evaluation and the table, nothing else.
    changed = {**config, "unified": {"criterion": "validation"}}
    assert scheduled_jobs(snakemake(tmp, changed, table, "-n")) == {"evaluate_unified": 1, "aggregate": 1}
    # A variant naming no family is a config error at start-up.
    bad = {**config, "generator": {**config["generator"], "vitgan_sa": {"model": {"selective": False}}}}
    proc = snakemake(tmp, bad, "-n", check=False)
    assert proc.returncode != 0 and "'family' is a required property" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_external_sets_run_beside_a_trained_generator(finished_run):
    """A published set in the layout of Zenodo record 13928371 (generator / filter / subset folders of
    class-labelled images) and a lab's canonical HDF5 store, evaluated next to HistoGAN: the same
    filter, strategy and tables; their content, not their location, reruns them."""
    from test_external import write_canonical_set, write_zenodo_layout

    tmp, config = finished_run
    template = write_zenodo_layout(tmp / "zenodo_13928371", n_per_class=20)
    external = {"dit_pub": {"family": "external", "path": template, "classes": {"0": "normal", "1": "tumor"},
                            "device": "cpu"},
                "lab": {"family": "external", "path": str(write_canonical_set(tmp / "lab.h5")), "device": "cpu"}}
    # HistoGAN and its `none` filter trained by the latent-diffusion test above.
    config = {**config, **LDM_MICRO, "strategies": ["baseline", "traditional", "synthetic_only"],
              "generators": ["histogan", "dit_pub", "lab"], "generator": {**GAN_MICRO["generator"], **external}}
    snakemake(tmp, config)
    results = tmp / "results/pcam"
    for name in ("dit_pub", "lab"):
        gen = results / "generators" / name / "subset0"
        _, labels, _ = read_store(gen / "pool.h5")
        assert np.bincount(labels).tolist() == [20, 20]  # 4 r N_i per class, as HistoGAN's pool
        assert json.loads((gen / "convergence.json").read_text())["epoch"] is None
        assert not (gen / "fid_curve.png").exists() and not (gen / "checkpoint_scores.tsv").exists()
        assert len((gen / "sources.tsv").read_text().splitlines()) == 41
    quality = pd.read_csv(results / "tables/quality.tsv", sep="\t", keep_default_na=False)
    assert list(quality[quality["class"] == ""].generator) == ["real", "histogan", "dit_pub", "lab"]
    table = pd.read_csv(results / "tables/classification.tsv", sep="\t", keep_default_na=False)
    synthetic_only = table[table.strategy == "synthetic_only"]
    assert list(synthetic_only.generator) == ["histogan", "dit_pub", "lab"] and (synthetic_only["n"] == 2).all()
    # Moved elsewhere, same files: nothing reruns. One image replaced: that set's branch only.
    moved = tmp / "moved"
    shutil.move(tmp / "zenodo_13928371", moved)
    config["generator"]["dit_pub"]["path"] = template.replace(str(tmp / "zenodo_13928371"), str(moved))
    assert scheduled_jobs(snakemake(tmp, config, "-n")) == {}
    victim = moved / "DiT/none/subset0/1/00003.png"
    victim.write_bytes((moved / "DiT/none/subset0/1/00004.png").read_bytes())
    assert scheduled_jobs(snakemake(tmp, config, "-n")) == {
        "import_external": 1, "pool_features": 1, "filter": 1, "quality": 1, "quality_table": 1,
        "convergence_external": 1, "train_classifier_synthetic": 2, "aggregate": 1, "plot_synthetic_only_auc": 1}
    # A class the dataset lacks: one line at start-up, no job run (the other checks: tests/test_external.py).
    path = config["generator"]["dit_pub"]["path"]
    bad = {**config, "generator": {**config["generator"], "dit_pub": {**external["dit_pub"], "path": path,
                                                                      "classes": {"0": "normal", "1": "stroma"}}}}
    proc = snakemake(tmp, bad, "-n", check=False)
    needle = f"config generator.dit_pub: class folder {path.format(subset=0)}/1 is not a class of the dataset"
    assert proc.returncode != 0 and needle in proc.stdout + proc.stderr
