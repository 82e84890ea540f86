"""A resource plan before the run (`make plan`): jobs, GPU- and CPU-hours and disk per stage.

    python -m histosynth.plan [--configfile config.yaml]

The jobs are Snakemake's own (a `--dry-run --forceall` of the config, parsed per job
with its wildcards), so the plan counts exactly what a run would schedule. Each job's
work is counted in images through a model (training images, sampled images, images
scored) from the config, and divided by a throughput from `workflow/throughput.yaml`,
which says where each figure came from: measured on a CPU or a GPU, or, where no GPU
has been measured, the model's FLOPs over an assumed fraction of the GPU's bf16 peak.
FLOPs and parameter counts are counted with torch.utils.flop_counter on the models the
config builds (the table keeps them for config.yaml's models, so its plan needs no torch).

Disk is what the stages write, from the same counts: stores and pools are uint8
images, snapshots and training states float32 parameters (Adam: two moments more; file
sizes of the models as built). Training keeps only the snapshots some selection metric
and EMA alpha could choose: at most metrics x alphas per run at the end, two more while
it runs (histosynth.evaluation.selection.kept_epochs), which is what the plan counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "workflow" / "throughput.yaml"
# Split sizes of the datasets whose size is fixed (PCam's H5 files; NCT-CRC-HE-100K with
# prepare's default 10 % validation, CRC-VAL-HE-7K as test); other datasets are read from their stores.
KNOWN_SPLITS = {"pcam": {"train": 262_144, "valid": 32_768, "test": 32_768, "image_size": 96, "classes": 2},
                "nct_crc_he": {"train": 90_000, "valid": 10_000, "test": 7_180, "image_size": 224, "classes": 9}}
GB = 1e9


def dry_run_jobs(configfiles=(), workdir=ROOT) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job a fresh run of the config would schedule (in `workdir`)."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "--forceall", "-s", str(ROOT / "Snakefile"), "--cores", "1",
           "--directory", str(workdir)]
    if configfiles:
        cmd += ["--configfile", *map(str, configfiles)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        # Snakemake writes a config error to stdout, its notices to stderr: the end of both.
        raise SystemExit(f"histosynth plan: the dry run failed:\n{(out.stderr + out.stdout).strip()[-2000:]}")
    jobs, rule = [], None
    for line in out.stdout.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            rule = m[1]
            jobs.append((rule, {}))
        elif rule and (m := re.match(r"^wildcards: (.*)$", line.strip())):
            jobs[-1] = (rule, dict(kv.split("=", 1) for kv in m[1].split(", ")))
    return [j for j in jobs if j[0] != "all"]


def resolved_config(configfiles=()) -> dict:
    """The config as the workflow sees it: config.yaml, the user's files over it, the schema's defaults."""
    from snakemake.utils import update_config

    from histosynth.config_schema import generator_schemas, validate_config
    from histosynth.generators import resolve_generators

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for path in configfiles:
        update_config(config, yaml.safe_load(Path(path).read_text()) or {})
    validate_config(config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    config["_generators"] = resolve_generators(config["generators"], config["generator"], generator_schemas())
    return config


def split_sizes(config, workdir=ROOT) -> dict:
    """Images per split, the image size and the class count: from the prepared stores when there
    are some, else the known sizes of PCam and NCT-CRC-HE."""
    name = config["dataset"]["name"]
    known = dict(KNOWN_SPLITS.get(name, {}))
    data = Path(workdir) / config["results_dir"] / name / "data"
    if (data / "test.h5").is_file() or not known:
        from histosynth.data.store import store_info
        from histosynth.errors import InputError

        try:
            for split in ("train", "valid", "test"):
                info = store_info(data / f"{split}.h5")
                known |= {split: info.n, "image_size": info.image_shape[0], "classes": len(info.class_names)}
        except InputError as e:
            raise SystemExit(f"histosynth plan: dataset '{name}' has no fixed size: prepare it first "
                             f"(snakemake prepare) so the plan can read its stores ({e})") from None
    if config["dataset"]["image_size"]:
        known["image_size"] = config["dataset"]["image_size"]
    return known


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_trainer(family: str, gen_cfg: dict, image_size: int, classes: int, vae_model: dict, tmp, amp=None):
    """The training adapter of `family` as the config builds it; latent families get an untrained
    VAE of the config's size (written to `tmp`): its weights change no cost."""
    from dataclasses import asdict

    import torch

    from histosynth.generative.families import FAMILIES, family_module

    kind = {"ema_kimg": gen_cfg.get("ema_kimg", 0.0)}
    if FAMILIES[family].latent:
        from histosynth.generative.models.vae import VAE, VAEConfig

        vae = VAE(VAEConfig(**{**vae_model, "image_size": image_size}))
        torch.save({"model": asdict(vae.cfg), "state": vae.state_dict(), "latent_scale": 1.0, "epoch": 0},
                   f"{tmp}/vae.pt")
        kind = {"vae_path": f"{tmp}/vae.pt", "diffusion": gen_cfg.get("diffusion", {})}
    return family_module(family).Trainer(gen_cfg["model"], classes, image_size, gen_cfg["lr"],
                                         tuple(gen_cfg["betas"]), amp, **kind)


def write_snapshot(model, family: str, n_eval: int, classes: int, directory):
    """The snapshot file training writes for `model` (generation reads it)."""
    import torch

    from histosynth.checkpoint import save_checkpoint

    return save_checkpoint(directory, 1, {**model.snapshot(), "family": family,
                                          "eval_noise": torch.zeros(n_eval, model.z_dim),
                                          "eval_labels": torch.arange(n_eval) % classes})


def generator_costs(family: str, gen_cfg: dict, image_size: int, classes: int, vae_cfg: dict) -> dict:
    """File sizes and FLOPs per image of one generator as the config builds it (torch, CPU, a batch of 2)."""
    import io
    import tempfile

    import numpy as np
    import torch

    from histosynth.generative.generate import load_generator, sample_images
    from histosynth.torch_utils import FlopCount

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_trainer(family, gen_cfg, image_size, classes, vae_cfg.get("model", {}), tmp)
        x = torch.rand(2, 3, image_size, image_size) * 2 - 1
        y = torch.arange(2) % classes
        with FlopCount() as train:
            model.step(x, y, train_g=True)
        with FlopCount() as critic:  # GANs: a critic-only step (n_critic > 1)
            model.step(x, y, train_g=False)
        path = write_snapshot(model, family, gen_cfg.get("n_eval_noise", 64), classes, tmp)
        G = load_generator(path, "cpu", gen_cfg.get("sampling", {}))
        sample_images(G, y.numpy(), np.arange(2), 2)  # one-off work (HistoGAN's standing BN statistics) first
        with FlopCount() as sample:
            sample_images(G, y.numpy(), np.arange(2), 2)
        state = io.BytesIO()  # resume.pt holds this state dict (and a few small things)
        torch.save(model.state_dict(), state)
        return {"snapshot_bytes": Path(path).stat().st_size, "state_bytes": state.tell(),
                "train_gflop": train.total / 2e9, "critic_gflop": critic.total / 2e9,
                "sample_gflop": sample.total / 2e9}


def vae_costs(vae_cfg: dict, image_size: int) -> dict:
    """The VAE's FLOPs per training image (forward and backward: 3x the forward pass)."""
    import torch

    from histosynth.generative.models.vae import VAE, VAEConfig
    from histosynth.torch_utils import FlopCount

    vae = VAE(VAEConfig(**{**vae_cfg.get("model", {}), "image_size": image_size}))
    with torch.no_grad(), FlopCount() as fwd:
        vae(torch.zeros(1, 3, image_size, image_size))
    return {"train_gflop": 3 * fwd.total / 1e9}


def classifier_costs(backbone: str, image_size: int, classes: int) -> dict:
    """A torchvision ResNet's parameters and forward FLOPs per image (training: 3x, forward and backward)."""
    import torch
    import torchvision

    from histosynth.torch_utils import FlopCount

    model = getattr(torchvision.models, backbone)(num_classes=classes).eval()
    with torch.no_grad(), FlopCount() as fwd:
        model(torch.zeros(1, 3, image_size, image_size))
    return {"model_bytes": 4 * sum(p.numel() for p in model.parameters()), "eval_gflop": fwd.total / 1e9}


def costs(config, sizes, table) -> dict:
    """Every model's costs, from the table where it holds this exact model, else counted now."""
    from histosynth.generative.families import FAMILIES
    from histosynth.generators import EXTERNAL

    out, cached = {}, table.get("costs", {})
    trained = [g for g in config["generators"] if config["_generators"][g]["family"] != EXTERNAL]
    for name in trained:  # an external set has no model
        cfg = config["_generators"][name]
        key = _key(cfg["family"], cfg["model"], cfg.get("diffusion"), cfg.get("sampling"), config["vae"].get("model"),
                   sizes["image_size"], sizes["classes"])
        out[name] = cached.get(key) or generator_costs(cfg["family"], cfg, sizes["image_size"], sizes["classes"],
                                                       config["vae"]) | {"key": key, "family": cfg["family"]}
    if any(FAMILIES[config["_generators"][g]["family"]].latent for g in trained):
        key = _key("vae", config["vae"].get("model"), sizes["image_size"])
        out["vae"] = cached.get(key) or vae_costs(config["vae"], sizes["image_size"]) | {"key": key}
    for backbone in {config["classifier"]["backbone"], config["selection"]["backbone"]}:
        key = _key(backbone, sizes["image_size"], sizes["classes"])
        out[backbone] = cached.get(key) or classifier_costs(backbone, sizes["image_size"], sizes["classes"]) | {"key": key}
    return out


# The stages whose time the plan models; the others (download, prepare, selection, tables,
# figures) take minutes on a CPU, or, for download, what the network gives.
MODELLED = {"train_generator", "generate", "evaluate_unified", "filter", "train_classifier",
            "train_classifier_synthetic", "feature_extractor", "train_vae", "reference_quality", "pool_features",
            "quality", "vae_quality", "inception_stats", "encoder_stats"}


def seconds(table, device: str, what: str, gflop: float) -> float:
    """Seconds that `gflop` of work takes on `device` ("cpu"/"gpu"), `what` naming the model and
    mode ("histogan_train", "ldm_dit_sample", "classifier_eval", ...): at the GFLOP/s the table
    measured for it there, else (GPU) at the assumed fraction of the GPU's bf16 peak."""
    measured = table[device]["measured"].get(what)
    if measured:
        return gflop / measured["gflops"]
    if device == "cpu":
        raise SystemExit(f"histosynth plan: {TABLE} has no CPU throughput for '{what}'")
    return gflop / (table["gpu"]["peak_tflops"] * 1e3 * table["gpu"]["mfu"])


def plan(config, jobs, table, workdir=ROOT) -> tuple[list[dict], dict]:
    """Per rule: jobs, device, GPU- and CPU-hours; and the bytes written by kind, (final, peak)."""
    from histosynth.evaluation.selection import ALPHAS
    from histosynth.generative.families import FAMILIES

    sizes = split_sizes(config, workdir)
    c = costs(config, sizes, table)
    gens, sel, gen, cls = config["_generators"], config["selection"], config["generation"], config["classifier"]
    r = gen["ratio"]
    n_sub = int(sizes["train"] * config["subsets"]["fraction"])
    n_valid, n_test, image_bytes = sizes["valid"], sizes["test"], sizes["image_size"] ** 2 * 3
    n_score = sel["images_per_class"] * sizes["classes"] if sel["images_per_class"] else n_sub
    n_pool = gen["pool_factor"] * r * n_sub
    extractor, resnet = c[sel["backbone"]]["eval_gflop"], c[cls["backbone"]]["eval_gflop"]

    def on(setting):
        return "cpu" if setting == "cpu" else "gpu"

    def snapshots(g):
        return len(range(g["save_from"] + g["save_every"], g["epochs"] + 1, g["save_every"]))

    # Snapshots a run keeps: one per selectable metric (fid and kid in every feature space) and alpha.
    spaces = 1 + bool(sel["inception_weights"]) + len(config["quality"]["encoders"])
    kept = 2 * spaces * len(ALPHAS)

    def training_images(strategy):  # per epoch; transfer: the synthetic phase, then the real one
        return {"baseline": n_sub, "traditional": n_sub, "augment": n_sub * (1 + r), "synthetic_only": n_sub * r,
                "transfer": n_sub * (1 + r)}[strategy]

    rows, disk = defaultdict(lambda: {"jobs": 0, "gpu_h": 0.0, "cpu_h": 0.0, "device": None}), defaultdict(float)
    peak = defaultdict(float)  # where the most on disk at once exceeds the final size
    for rule, w in jobs:
        name = w.get("generator")
        g, k = gens.get(name), c.get(name)
        dev, s = "cpu", 0.0
        if rule == "train_generator":
            dev = on(g["device"])
            s = seconds(table, dev, f"{g['family']}_train", g["epochs"] * n_sub * k["train_gflop"] / g.get("n_critic", 1)
                        + g["epochs"] * n_sub * k["critic_gflop"] * (1 - 1 / g.get("n_critic", 1)))
            # Each snapshot scored as it is written: its images, their features, and for a critic
            # that classifies, the validation and test images through it (a forward pass: a third
            # of a critic step's FLOPs).
            s += (seconds(table, dev, f"{g['family']}_sample", snapshots(g) * n_score * k["sample_gflop"])
                  + seconds(table, dev, "classifier_eval", snapshots(g) * n_score * extractor * spaces))
            if FAMILIES[g["family"]].critic_classifies:
                s += seconds(table, dev, "classifier_eval", snapshots(g) * (n_valid + n_test) * k["critic_gflop"] / 3)
            disk["generator snapshots"] += min(snapshots(g), kept) * k["snapshot_bytes"]
            peak["generator snapshots"] += min(snapshots(g), kept + 2) * k["snapshot_bytes"]
            disk["generator training states (resume.pt, resume.prev.pt)"] += 2 * k["state_bytes"]
        elif rule == "generate":
            dev = on(g["device"])
            s = seconds(table, dev, f"{g['family']}_sample", n_pool * k["sample_gflop"])
            disk["pools"] += n_pool * image_bytes
        elif rule == "import_external":  # at most a trained generator's pool; reading files is not modelled
            disk["pools"] += n_pool * image_bytes
        elif rule == "filter":
            dev = on(cls["device"])
            passes = config["filtering"]["mc_passes"] if w.get("filter") == "selective" else 1
            s = seconds(table, dev, "classifier_eval", n_pool * passes * resnet)
            disk["filtered sets"] += r * n_sub * image_bytes
        elif rule in ("train_classifier", "train_classifier_synthetic"):
            dev = on(cls["device"])
            s = (seconds(table, dev, "classifier_train", cls["epochs"] * training_images(w["strategy"]) * 3 * resnet)
                 + seconds(table, dev, "classifier_eval", (cls["epochs"] * n_valid + n_test) * resnet))
            disk["classifier weights (model.pt per run)"] += c[cls["backbone"]]["model_bytes"]
        elif rule == "feature_extractor":
            dev = on(cls["device"])
            s = (seconds(table, dev, "classifier_train", sel["extractor"]["epochs"] * n_sub * 3 * extractor)
                 + seconds(table, dev, "classifier_eval", sel["extractor"]["epochs"] * n_valid * extractor))
        elif rule == "train_vae":
            dev = on(config["vae"]["device"])
            s = seconds(table, dev, "vae_train", config["vae"]["epochs"] * n_sub * c["vae"]["train_gflop"])
        elif rule in ("reference_quality", "pool_features", "quality", "vae_quality", "inception_stats",
                      "encoder_stats"):
            dev = on(cls["device"])
            s = seconds(table, dev, "classifier_eval", (n_sub + n_valid) * extractor)
        elif rule == "prepare":
            disk["image stores (train, valid, test)"] += (sizes["train"] + n_valid + n_test) * image_bytes
        row = rows[rule]
        row["jobs"] += 1
        row["modelled"] = rule in MODELLED
        row["longest_h"] = max(row.get("longest_h", 0.0), s / 3600)
        row["device"] = dev if row["device"] in (None, dev) else "cpu+gpu"
        row["gpu_h" if dev == "gpu" else "cpu_h"] += s / 3600
    return [{"rule": k, **v} for k, v in rows.items()], {kind: (b, peak.get(kind, b)) for kind, b in disk.items()}


def render(rows, disk, config, table) -> str:
    gpu = table["gpu"]
    lines = [f"Plan for {config['dataset']['name']}: {sum(r['jobs'] for r in rows)} jobs. GPU: {gpu['name']}, "
             + ("measured" if gpu["measured"] else f"{gpu['mfu']:.0%} of {gpu['peak_tflops']} TFLOP/s assumed"),
             "", f"{'stage':28} {'jobs':>6} {'device':>7} {'GPU-h':>9} {'CPU-h':>9} {'longest job h':>14}"]
    for r in sorted(rows, key=lambda r: (not r["modelled"], -(r["gpu_h"] + r["cpu_h"]))):
        hours = (f"{r['gpu_h']:9.1f} {r['cpu_h']:9.1f} {r['longest_h']:14.2f}" if r["modelled"]
                 else f"{'-':>9} {'-':>9} {'-':>14}")
        lines.append(f"{r['rule']:28} {r['jobs']:6d} {r['device']:>7} {hours}")
    lines.append(f"{'total':28} {sum(r['jobs'] for r in rows):6d} {'':>7} {sum(r['gpu_h'] for r in rows):9.1f} "
                 f"{sum(r['cpu_h'] for r in rows):9.1f}")
    lines.append("(-: not modelled; minutes on a CPU each, download as the network allows)")
    lines += ["", f"Disk (GB; snapshots: at most, whatever the curves){'':8} {'final':>9} {'peak':>9}"]
    for kind, (final, most) in sorted(disk.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"  {kind:56} {final / GB:9.1f} {most / GB:9.1f}")
    lines.append(f"  {'total':56} {sum(f for f, _ in disk.values()) / GB:9.1f} "
                 f"{sum(m for _, m in disk.values()) / GB:9.1f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", nargs="*", default=[], help="config files over config.yaml (as snakemake's)")
    ap.add_argument("--print-costs", action="store_true",
                    help=f"count the config's models' costs and print them as {TABLE.name}'s `costs` entries")
    args = ap.parse_args(argv)
    table = yaml.safe_load(TABLE.read_text())
    try:
        config = resolved_config(args.configfile)
    except (OSError, yaml.YAMLError, ValueError) as e:  # a missing or unparsable file, a bad key: one line
        raise SystemExit(f"histosynth plan: {e}") from None
    if args.print_costs:
        c = costs(config, split_sizes(config), {})
        print(yaml.safe_dump({v.pop("key"): {**v, "model": name} for name, v in c.items()}, sort_keys=False))
        return
    jobs = dry_run_jobs(args.configfile)
    rows, disk = plan(config, jobs, table)
    print(render(rows, disk, config, table))


if __name__ == "__main__":
    main()
