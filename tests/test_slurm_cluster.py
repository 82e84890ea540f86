"""The micro workflow through workflow/profiles/slurm on a real single-node SLURM (issue 18):
slurmctld, slurmd, slurmdbd (accounting) and munge from Debian, brought up for this module
only (tests/slurm_cluster.py) and removed again.

One run submits every job through the real sbatch: CPU stages to the CPU partition (the
classifier and feature extractor here are `device: cpu`), GPU stages to the GPU partition
with a GPU, each with the profile's memory and time limit, as SLURM itself records them
(sacct). In the same run a diverging generator fails (and its retry) and the run exits
non-zero, and a generator's training job is cancelled mid-run with scancel: the profile's
retry resubmits it and it resumes to exactly the result of an identical uncancelled run.
A wrong account is refused with the plugin's message."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from slurm_cluster import ACCOUNT, SlurmCluster, Unavailable
from test_slurm_profile import lab_profile, minutes
from test_workflow import GAN_MICRO, micro_config, write_pcam_mirror

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "workflow/profiles/slurm/config.yaml"
PARTITIONS = {"<your_account>": ACCOUNT, "<your_cpu_partition>": "cpu", "<your_gpu_partition>": "gpu"}
TIMEOUT = 420


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = SlurmCluster.unavailable()
    if why:
        pytest.skip(f"no real SLURM cluster on this machine ({why}); tests/test_slurm_profile.py checks the "
                    "profile against fake SLURM commands instead")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except Unavailable as e:
        cluster.stop()
        pytest.skip(f"no real SLURM cluster on this machine ({e})")
    except BaseException:
        cluster.stop()
        raise
    try:
        yield cluster
    finally:
        cluster.stop()


def command(tmp: Path, profile: Path, *targets) -> list[str]:
    # `timeout -k`: the plugin may ignore SIGTERM while it waits on job states.
    return ["timeout", "-k", "10", str(TIMEOUT), sys.executable, "-m", "snakemake", "--snakefile",
            str(REPO / "Snakefile"), "--directory", str(tmp), "--configfile", str(tmp / "micro.yaml"),
            "--profile", str(profile), "--slurm-init-seconds-before-status-checks", "1",
            "--seconds-between-status-checks", "1", *map(str, targets)]


def jobs(cluster) -> pd.DataFrame:
    """Every job SLURM ran, as its accounting recorded it: rule (from the plugin's comment), partition,
    state, GPUs, memory (MB), time limit (min)."""
    out = cluster.run("sacct", "-X", "-n", "-P", "-o", "JobID,Partition,State,ReqTRES,ReqMem,TimelimitRaw,Comment").stdout
    rows = []
    for line in out.splitlines():
        jobid, partition, state, tres, mem, limit, comment = line.split("|", 6)
        gpus = re.search(r"gres/gpu=(\d+)", tres)
        rows.append({"jobid": jobid, "rule": re.match(r"rule_(\w+?)(_wildcards_|$)", comment)[1], "comment": comment,
                     "partition": partition, "state": state.split()[0], "gpus": int(gpus[1]) if gpus else 0,
                     "mem_mb": int(re.match(r"(\d+)M", mem)[1]), "minutes": int(limit)})
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_the_profile_on_a_real_cluster(cluster, tmp_path):
    checksums = write_pcam_mirror(tmp_path / "mirror")
    config = {**micro_config(tmp_path, checksums), **{k: GAN_MICRO[k] for k in ("selection", "generation")},
              "strategies": ["baseline", "traditional"], "seeds": 1}
    same = {"family": "histogan", "epochs": 12}  # two identical trainings, one of them cancelled mid-run
    config["generators"] = ["histogan_ref", "histogan_kill", "histogan_nan"]
    config["generator"] = {"histogan": {**GAN_MICRO["generator"]["histogan"], "device": "auto"},  # a GPU job
                           "histogan_ref": same, "histogan_kill": same,
                           "histogan_nan": {"family": "histogan", "lr": 1e30}}  # diverges at epoch 1
    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(config))
    profile = lab_profile(tmp_path, PARTITIONS)
    results = tmp_path / "results/pcam"
    gen = results / "generators"
    targets = [results / "tables/classification.tsv",
               *(gen / g / "subset0/losses.tsv" for g in config["generators"])]

    run = subprocess.Popen(command(tmp_path, profile, *targets), env=cluster.env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    log = results / "logs/train_generator/histogan_kill_subset0.log"
    cancelled = None
    while run.poll() is None and cancelled is None:
        if "epoch=3 " in (log.read_text() if log.exists() else ""):
            queue = cluster.run("squeue", "-h", "-o", "%i|%k").stdout.splitlines()
            cancelled = next((q.split("|")[0] for q in queue if "histogan_kill" in q), None)
            if cancelled:
                cluster.run("scancel", cancelled)
        time.sleep(0.1)
    output, _ = run.communicate(timeout=TIMEOUT + 30)
    assert run.returncode not in (124, 137), f"the run hung:\n{output[-5000:]}"
    assert run.returncode != 0, "histogan_nan failed, so the run must fail"  # and everything else finished
    assert cancelled, f"histogan_kill never ran long enough to be cancelled:\n{output[-5000:]}"
    for target in targets:
        assert target.exists() == ("histogan_nan" not in str(target)), (target, output[-5000:])

    ran = jobs(cluster)
    assert "download" not in set(ran.rule)  # a localrule: it runs where Snakemake runs
    prof = yaml.safe_load(PROFILE.read_text())
    default, limits = prof["default-resources"], prof["set-resources"]
    for job in ran.itertuples():
        gpu_stage = job.rule == "train_generator"  # the only stages with device auto here
        assert (job.partition, job.gpus) == (("gpu", 1) if gpu_stage else ("cpu", 0)), job
        expected = limits.get(job.rule, default)
        assert job.mem_mb == expected.get("mem_mb", default["mem_mb"]), job
        assert job.minutes == minutes(expected.get("runtime", default["runtime"])), job
    assert {"prepare", "split", "feature_extractor", "train_classifier", "aggregate"} <= set(ran.rule)
    # The cancelled job was resubmitted (retries: 1) and resumed; the diverging one failed twice.
    kill = ran[ran.comment.str.contains("histogan_kill")]
    assert kill.state.tolist() == ["CANCELLED", "COMPLETED"], kill
    assert ran[ran.comment.str.contains("histogan_nan")].state.tolist() == ["FAILED", "FAILED"]
    assert re.search(r"resuming after epoch ([2-9]|1[01])\b", log.read_text()), log.read_text()[-2000:]
    ref, killed = (pd.read_csv(gen / g / "subset0/losses.tsv", sep="\t").drop(columns="seconds")
                   for g in ("histogan_ref", "histogan_kill"))
    pd.testing.assert_frame_equal(ref, killed)
    assert ((gen / "histogan_ref/subset0/checkpoint_scores.tsv").read_text()
            == (gen / "histogan_kill/subset0/checkpoint_scores.tsv").read_text())
    kept = [sorted((gen / g / "subset0/checkpoints").glob("epoch_*.pt")) for g in ("histogan_ref", "histogan_kill")]
    assert [p.name for p in kept[0]] == [p.name for p in kept[1]] and kept[0]
    for a, b in zip(*kept):
        a, b = (torch.load(p, weights_only=True)["G"] for p in (a, b))
        assert all(torch.equal(v, b[k]) for k, v in a.items())

    # A wrong account: refused by the plugin, naming the accounts there are.
    wrong = lab_profile(tmp_path / "wrong", {**PARTITIONS, "<your_account>": "nolab"})
    out = subprocess.run(command(tmp_path, wrong, results / "subsets/subset0.npy", "--forcerun", "split"),
                         env=cluster.env, capture_output=True, text=True, timeout=TIMEOUT + 30)
    assert out.returncode != 0
    log = max((tmp_path / ".snakemake/log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime).read_text()
    assert re.search(rf"The given account nolab appears to be invalid\. Available accounts:\n.*\b{ACCOUNT}\b", log), \
        log[-3000:]
