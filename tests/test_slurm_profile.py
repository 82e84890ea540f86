"""workflow/profiles/slurm against a fake SLURM: a real `snakemake --profile` run
(prepare -> split -> train_vae on a micro config) whose sbatch, srun,
sacct, squeue, ... are small scripts first on PATH. The fake sbatch records every
submission and runs the job at once (what the slurm executor plugin hands it:
`--wrap="<python -m snakemake ... --executor slurm-jobstep>"`, which calls srun);
sacct then reports COMPLETED or FAILED by the job's exit code. Checks the sbatch
flags each rule gets: account, partition, memory, time, CPUs, and a GPU only for
the GPU rules."""

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_workflow import micro_config, write_pcam_mirror

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "workflow/profiles/slurm/config.yaml"
PLACEHOLDERS = {"<your_account>": "testlab", "<your_cpu_partition>": "testcpu",
                "<your_gpu_partition>": "testgpu"}

# One script for every SLURM command, dispatched on the name it is called by.
FAKE_SLURM = r'''#!{python}
import fcntl, json, os, re, subprocess, sys
from pathlib import Path

STATE = Path({state!r})
cmd, args = os.path.basename(sys.argv[0]), sys.argv[1:]


def record(name, **extra):
    with open(STATE / f"{{name}}.jsonl", "a") as f:
        f.write(json.dumps({{"argv": args, **extra}}) + "\n")


def next_jobid():
    with open(STATE / "counter", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        jobid = int(f.read() or 1000) + 1
        f.seek(0), f.truncate(), f.write(str(jobid))
    return str(jobid)


def jobs():
    for p in sorted((STATE / "jobs").glob("*.json")):
        yield json.loads(p.read_text())


if cmd == "sbatch":
    opts, valued = {{}}, {{"--job-name", "--output", "--comment", "-A", "-p", "-t", "--mem",
                          "--mem-per-cpu", "-D", "-C", "--clusters"}}
    i = 0
    while i < len(args):
        a = args[i]
        if a in valued:
            opts[a] = args[i + 1]
            i += 2
            continue
        key, _, value = a.partition("=")
        opts[key] = value
        i += 1
    jobid = next_jobid()
    record("sbatch", jobid=jobid)
    script = opts["--wrap"] if "--wrap" in opts else sys.stdin.read()
    env = dict(os.environ, SLURM_JOB_ID=jobid, SLURM_JOBID=jobid, SLURM_JOB_NAME=opts["--job-name"])
    gpus = opts.get("--gpus")
    if gpus:  # what SLURM exports to a job that got GPUs
        env.update(SLURM_GPUS=gpus, CUDA_VISIBLE_DEVICES=",".join(map(str, range(int(gpus.split(":")[-1])))))
    log = Path(opts["--output"].replace("%j", jobid))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:  # synchronous: the job has finished when sbatch returns
        rc = subprocess.run(["/bin/sh", "-c", script], cwd=opts.get("-D"), env=env, stdin=subprocess.DEVNULL,
                            stdout=out, stderr=subprocess.STDOUT).returncode
    (STATE / "jobs").mkdir(exist_ok=True)
    (STATE / "jobs" / f"{{jobid}}.json").write_text(json.dumps(
        {{"id": jobid, "name": opts["--job-name"], "state": "COMPLETED" if rc == 0 else "FAILED", "log": str(log)}}))
    print(jobid)  # the --parsable form of "Submitted batch job <id>"
elif cmd in ("sacct", "squeue"):
    record(cmd)
    if "--name" in args:
        name = args[args.index("--name") + 1]
        for job in jobs():
            if job["name"] == name:
                print(f"{{job['id']}}|{{job['state']}}")
elif cmd == "srun":  # inside a job: drop srun's options, run the step
    record("srun", jobid=os.environ.get("SLURM_JOB_ID"))
    step = list(args)
    while step and step[0].startswith("-"):
        step.pop(0)
    os.execvp(step[0], step)
elif cmd == "sacctmgr":  # the accounts of this user (the plugin validates -A against them)
    print({account!r})
elif cmd == "sinfo":
    print("testcpu*\ntestgpu")
elif cmd == "scontrol":
    print("MaxArraySize            = 1001\nMinJobAge               = 300 sec")
else:  # scancel, sshare
    record(cmd)
'''
COMMANDS = ["sbatch", "sacct", "squeue", "srun", "sacctmgr", "sinfo", "scontrol", "scancel", "sshare"]


def fake_slurm(root: Path) -> tuple[Path, Path]:
    """A bin/ folder of fake SLURM commands and the state folder they write to."""
    bin_dir, state = root / "bin", root / "state"
    bin_dir.mkdir(parents=True)
    state.mkdir()
    script = bin_dir / "fake_slurm.py"
    script.write_text(FAKE_SLURM.format(python=sys.executable, state=str(state),
                                        account=PLACEHOLDERS["<your_account>"]))
    script.chmod(0o755)
    for name in COMMANDS:
        (bin_dir / name).symlink_to(script.name)
    return bin_dir, state


def lab_profile(root: Path, placeholders: dict = PLACEHOLDERS) -> Path:
    """The repository's slurm profile (and its partitions.yaml) with the placeholders filled in, as a lab would."""
    (root / "profile").mkdir(parents=True)
    texts = {name: (PROFILE.parent / name).read_text() for name in ("config.yaml", "partitions.yaml")}
    for placeholder, value in placeholders.items():
        assert any(placeholder in t for t in texts.values()), placeholder
        texts = {name: t.replace(placeholder, value) for name, t in texts.items()}
    texts["config.yaml"] = texts["config.yaml"].replace("workflow/profiles/slurm/partitions.yaml",
                                                        str(root / "profile/partitions.yaml"))
    for name, text in texts.items():
        (root / "profile" / name).write_text(text)
    return root / "profile"


def flags(argv: list[str]) -> dict[str, str]:
    """sbatch argv -> {flag: value} ('-A x' and '--gpus=1' alike; bare flags map to '')."""
    out, i = {}, 0
    while i < len(argv):
        a = argv[i]
        if "=" in a and a.startswith("-"):
            k, v = a.split("=", 1)
            out[k] = v
            i += 1
        elif a.startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            out[a] = argv[i + 1]
            i += 2
        else:
            out[a] = ""
            i += 1
    return out


def minutes(runtime) -> int:
    """A profile runtime ("4h", "90m", "1d", or minutes) in minutes."""
    if isinstance(runtime, int):
        return runtime
    m = re.fullmatch(r"(\d+)([dhm])", str(runtime))
    return int(m[1]) * {"d": 1440, "h": 60, "m": 1}[m[2]]


@pytest.mark.slow
def test_slurm_profile_submits_cpu_and_gpu_jobs_with_their_resources(tmp_path):
    """The fallback where no real cluster can be started (tests/test_slurm_cluster.py runs one)."""
    from slurm_cluster import SlurmCluster

    if SlurmCluster.unavailable() is None:
        pytest.skip("a real SLURM cluster runs the profile here instead (tests/test_slurm_cluster.py)")
    checksums = write_pcam_mirror(tmp_path / "mirror")
    config = micro_config(tmp_path, checksums)
    # The raw files already where `download` puts them: one SLURM job fewer (each
    # costs two Snakemake start-ups and a torch import, 10-20 s on 2 cores).
    (tmp_path / "resources/pcam").mkdir(parents=True)
    for gz in (tmp_path / "mirror").glob("*.h5.gz"):
        (tmp_path / "resources/pcam" / gz.name[:-3]).write_bytes(gzip.decompress(gz.read_bytes()))
    # The VAE's device stays "auto", so train_vae declares gpu=1 (a GPU job); with no
    # GPU here it runs on CPU when the config allows that.
    config["vae"] = {"model": {"base_channels": 8, "channel_mults": [1, 2, 4], "mid_attention": False},
                     "epochs": 1, "batch_size": 10, "device": "auto", "threads": 1}
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    if "allow_cpu" in schema["properties"]:
        config["allow_cpu"] = True
    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(config))
    bin_dir, state = fake_slurm(tmp_path / "slurm")
    profile = lab_profile(tmp_path)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    target = tmp_path / "results/pcam/vae/subset0/vae.pt"  # results_dir is absolute
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(tmp_path), "--configfile", str(tmp_path / "micro.yaml"),
           "--profile", str(profile),
           # poll the fake every second, not every 40 s
           "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1",
           str(target)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    logs = "\n".join(f"--- {p}\n{p.read_text()}" for p in sorted(tmp_path.rglob("*.log")))
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{logs}"
    assert target.stat().st_size > 0
    assert json.loads((tmp_path / "results/pcam/vae/subset0/metrics.json").read_text())
    assert (tmp_path / "results/pcam/subsets/subset0.npy").exists()

    submissions = [json.loads(line) for line in (state / "sbatch.jsonl").read_text().splitlines()]
    by_rule = {}
    for sub in submissions:
        f = flags(sub["argv"])
        rule = re.fullmatch(r"rule_(\w+?)(_wildcards_.*)?", f["--comment"])[1]
        assert rule not in by_rule, f"{rule} submitted twice"
        by_rule[rule] = f
    assert set(by_rule) == {"prepare", "split", "train_vae"}

    prof = yaml.safe_load(PROFILE.read_text())
    default, gpu_rule = prof["default-resources"], prof["set-resources"]["train_vae"]
    for rule, f in by_rule.items():
        assert f["-A"] == "testlab"
        assert "--parsable" in f and "--wrap" in f and f["-D"] == str(tmp_path)
    for rule in ("prepare", "split"):  # CPU rules
        f = by_rule[rule]
        assert f["-p"] == "testcpu"
        assert f["--mem"] == str(default["mem_mb"]) and f["-t"] == str(minutes(default["runtime"]))
        assert f["--cpus-per-task"] == "1" and f["--ntasks"] == "1"
        assert not {"--gpus", "--gres", "--cpus-per-gpu"} & set(f), f
    f = by_rule["train_vae"]  # GPU rule: its own GPU on the GPU partition
    assert f["--gpus"] == "1" and "--gres" not in f
    assert f["-p"] == "testgpu"
    assert f["--cpus-per-gpu"] == "1" and "--cpus-per-task" not in f  # cpus_per_gpu = threads (1 here)
    assert f["--mem"] == str(gpu_rule["mem_mb"]) and f["-t"] == str(minutes(gpu_rule["runtime"]))

    # Each job ran one step through srun (the slurm-jobstep executor), the GPU one with its GPU.
    steps = [json.loads(line) for line in (state / "srun.jsonl").read_text().splitlines()]
    assert sorted(s["jobid"] for s in steps) == sorted(s["jobid"] for s in submissions)
    vae_jobid = next(s["jobid"] for s in submissions if flags(s["argv"])["--comment"].startswith("rule_train_vae"))
    assert "--gpus=1" in next(s["argv"] for s in steps if s["jobid"] == vae_jobid)
    assert (state / "sacct.jsonl").exists() or (state / "squeue.jsonl").exists()


def gpu_rules() -> set[str]:
    """Rules of workflow/rules/*.smk that declare the `gpu` resource (also via `use rule ... as`)."""
    declared, uses = set(), []
    for smk in sorted((REPO / "workflow/rules").glob("*.smk")):
        rule = None
        for line in smk.read_text().splitlines():
            if m := re.match(r"\s*(?:rule|checkpoint)\s+(\w+)\s*:", line):
                rule = m[1]
            elif m := re.match(r"\s*use rule (\w+) as (\w+)", line):
                rule = m[2]
                uses.append((m[1], m[2]))
            elif rule and re.match(r"\s*gpu\s*=", line):
                declared.add(rule)
    return declared | {new for old, new in uses if old in declared}


def test_every_gpu_rule_goes_to_the_gpu_partition():
    """A new GPU rule missing from the profile would be sent to the CPU partition."""
    prof = yaml.safe_load(PROFILE.read_text())
    rules = gpu_rules()
    assert {"train_vae", "train_generator", "train_classifier", "train_classifier_synthetic"} <= rules
    for rule in rules:
        res = prof["set-resources"].get(rule)
        assert res, f"rule {rule} declares gpu but has no set-resources entry in {PROFILE}"
        assert {"cpus_per_gpu", "mem_mb", "runtime"} <= set(res)
        # The count is the rule's (train_generator: `gpus`, 0 with device cpu), never overridden here;
        # the partition follows from it (partitions.yaml), so a CPU stage lands on the CPU partition.
        assert "gpu" not in res and "slurm_partition" not in res
    partitions = yaml.safe_load((PROFILE.parent / "partitions.yaml").read_text())["partitions"]
    assert partitions == {"<your_cpu_partition>": {"max_gpu": 0}, "<your_gpu_partition>": {"max_gpu": 8}}
    assert prof["slurm-partition-config"] == "workflow/profiles/slurm/partitions.yaml"
    assert prof["executor"] == "slurm"
    assert {"slurm_account", "mem_mb", "runtime"} <= set(prof["default-resources"])
    # Keys the default (workflow) profile sets replace the cluster profile's, so it must set none of these.
    default = yaml.safe_load((REPO / "workflow/profiles/default/config.yaml").read_text())
    assert not set(default) & set(prof), set(default) & set(prof)
