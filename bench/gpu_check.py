"""What bench/gpu_check.sh measures on a GPU, per generator family at paper size (config.yaml's
models, PCam's 96 px) with its default precision: training and sampling images/s, peak memory,
model FLOP utilisation (FLOPs from torch.utils.flop_counter's formulas over the device's bf16
peak); the classifier's training images/s with batches augmented on the GPU; on >= 2 GPUs two
concurrent jobs on distinct GPUs (histosynth.gpu_slots) and a 2-rank NCCL DDP training run.
It appends a dated table to docs/benchmarks.md.

    .venv/bin/python bench/gpu_check.py [--peak-tflops 989] [--families histogan vitgan]

`--device cpu --tiny` runs the same code on small models (the test suite does, so the GPU
run finds no untested path); it writes the table to `--out` only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), from the vendors' data sheets; matched in order.
BF16_PEAK = [("H200", 989), ("H100 PCIe", 756), ("H100", 989), ("GH200", 989), ("B200", 2250), ("A100", 312),
             ("A800", 312), ("L40S", 362), ("L40", 181), ("A40", 150), ("A10", 125), ("L4", 121),
             ("RTX 4090", 165), ("RTX 3090", 71), ("RTX A6000", 155)]


def bf16_peak(name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK if key in name), None)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def family_config(family: str, tiny: bool) -> tuple[dict, dict]:
    """config.yaml's settings of `family` and of the VAE, or with --tiny the demo's small models."""
    from histosynth import plan

    config = plan.resolved_config([ROOT / "config.demo.yaml"] if tiny else [])
    cfg = dict(config["_generators"].get(family) or {})
    if not cfg:
        raise SystemExit(f"gpu_check: family '{family}' is not in the config's generators")
    if tiny:
        cfg["batch_size"] = 4
        cfg["sampling"] = {**cfg.get("sampling", {}), "steps": 2}
    return cfg, config["vae"]["model"]


def measure_family(family: str, device: torch.device, peak_tflops: float | None, *, tiny: bool, steps: int) -> dict:
    """Training and sampling images/s, peak memory and FLOP utilisation of one family."""
    from histosynth.generative.generate import load_generator, sample_images
    from histosynth.plan import build_trainer, write_snapshot
    from histosynth.torch_utils import FlopCount, amp_dtype

    cfg, vae_model = family_config(family, tiny)
    size, classes = (32 if tiny else 96), 2
    amp = amp_dtype(device, cfg.get("amp", True))
    with tempfile.TemporaryDirectory() as tmp:
        model = build_trainer(family, cfg, size, classes, vae_model, tmp, amp)
        model.to(device)
        b = cfg["batch_size"]
        x = torch.rand(b, 3, size, size, device=device) * 2 - 1
        y = torch.arange(b, device=device) % classes
        with FlopCount() as flops:
            model.step(x, y, train_g=True)  # also the warm-up (allocator, cuDNN autotuning)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            model.step(x, y, train_g=True)
        sync(device)
        train_s = (time.perf_counter() - t0) / steps
        train_memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
        G = load_generator(write_snapshot(model, family, 1, classes, tmp), device, cfg.get("sampling", {}))
        n = 8 if tiny else 256
        labels = np.arange(n) % classes
        sample_images(G, labels[:2], np.arange(2), 2, device)  # warm-up; one-off work (standing BN statistics)
        with FlopCount() as sample_flops:
            sample_images(G, labels[:2], np.arange(2), 2, device)
        sync(device)
        t0 = time.perf_counter()
        sample_images(G, labels, np.arange(n), n, device)  # as generation samples: per-image seeds
        sync(device)
        sample_s = time.perf_counter() - t0
    row = {"family": family, "batch": b, "precision": str(amp).removeprefix("torch.") if amp else "float32",
           "train_images_s": b / train_s, "sample_images_s": n / sample_s,
           "train_gflop_per_image": flops.total / b / 1e9, "sample_gflop_per_image": sample_flops.total / 2 / 1e9,
           "peak_memory_gb": train_memory / 1e9}
    if peak_tflops:
        row["train_mfu"] = row["train_images_s"] * row["train_gflop_per_image"] / (peak_tflops * 1e3)
        row["sample_mfu"] = row["sample_images_s"] * row["sample_gflop_per_image"] / (peak_tflops * 1e3)
    return row


def measure_classifier(device: torch.device, *, tiny: bool, steps: int) -> dict:
    """The classifier's training step as train_classifier runs it, batches augmented on the device."""
    import torch.nn.functional as F

    from histosynth.classification.classifier import build_classifier
    from histosynth.data.augment import AugmentConfig
    from histosynth.data.batches import BatchIterator

    size, b = (32, 8) if tiny else (96, 32)
    n = b * (steps + 3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    model = build_classifier("resnet18", 2).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    batches = BatchIterator(images, rng.integers(0, 2, n), b, shuffle=True, augment=AugmentConfig(), seed=0,
                            device=device, drop_last=True)
    for i, (x, y) in enumerate(batches):
        if i == 3:
            sync(device)
            t0 = time.perf_counter()
        assert x.device.type == device.type, "batches were not augmented on the device"
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return {"classifier_train_images_s": b * steps / (time.perf_counter() - t0)}


SLOT_JOB = ("import os, sys, time, torch; from histosynth.gpu_slots import gpu_slots\n"
            "devices = None if sys.argv[1] == 'machine' else sys.argv[1].split(',')\n"
            "with gpu_slots(1, lock_dir=sys.argv[2], devices=devices) as ids:\n"
            "    if torch.cuda.is_available(): torch.ones(1024, 1024, device='cuda').sum().item()\n"
            "    print(ids[0], flush=True); time.sleep(2)\n")


def concurrent_jobs(lock_dir: str, devices=None) -> list[str]:
    """Two jobs started together take distinct GPUs (histosynth.gpu_slots); their GPU ids."""
    arg = "machine" if devices is None else ",".join(devices)
    procs = [subprocess.Popen([sys.executable, "-c", SLOT_JOB, arg, lock_dir], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    ids = [p.communicate(timeout=120)[0].strip() for p in procs]
    if any(p.returncode for p in procs) or len(set(ids)) != 2:
        raise SystemExit(f"gpu_check: two concurrent jobs did not get distinct GPUs: {ids}")
    return ids


def ddp_run(device: str, tmp: Path) -> float:
    """A 2-rank DistributedDataParallel training run (torchrun; NCCL on CUDA, gloo on the CPU) of a
    small HistoGAN, through the pipeline's own launcher; its seconds."""
    from histosynth.data.store import write_store
    from histosynth.generative.training import train_generator

    rng = np.random.default_rng(0)
    write_store(tmp / "train.h5", rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), np.arange(16) % 2,
                ["normal", "tumor"])
    np.save(tmp / "subset.npy", np.arange(16))
    cfg = {**family_config("histogan", tiny=True)[0], "epochs": 1, "save_from": 0, "save_every": 1, "device": device,
           "batch_size": 8}
    cfg.pop("threads"), cfg.pop("gpus", None), cfg.pop("sampling", None)
    t0 = time.perf_counter()
    train_generator(tmp / "train.h5", tmp / "subset.npy", tmp / "losses.tsv", tmp / "ckpt", cfg, threads=2, gpus=2)
    if not (tmp / "losses.tsv").is_file():
        raise SystemExit("gpu_check: the 2-rank DDP run wrote no losses.tsv")
    return time.perf_counter() - t0


def render(device_name: str, peak, rows, extra) -> str:
    date = datetime.date.today().isoformat()
    lines = [f"### GPU check, {date}: {device_name}" + (f" (bf16 peak {peak:g} TFLOP/s)" if peak else ""), "",
             "| family | batch | precision | train images/s | train MFU | sample images/s | sample MFU "
             "| train GFLOP/image | peak memory GB |", "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        mfu = (f"{r['train_mfu']:.1%}", f"{r['sample_mfu']:.1%}") if "train_mfu" in r else ("-", "-")
        lines.append(f"| {r['family']} | {r['batch']} | {r['precision']} | {r['train_images_s']:.1f} | {mfu[0]} "
                     f"| {r['sample_images_s']:.1f} | {mfu[1]} | {r['train_gflop_per_image']:.2f} "
                     f"| {r['peak_memory_gb']:.2f} |")
    lines += [""] + [f"- {k}: {v}" for k, v in extra.items()] + [
        "", "`bash bench/gpu_check.sh` (the JSON beside it: bench/gpu_check.json).", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (default: looked up)")
    ap.add_argument("--families", nargs="*", default=["histogan", "cgan", "ldm_unet", "ldm_dit", "vitgan"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="small models (a CPU check of this script)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"), help="Markdown file the table is appended to")
    ap.add_argument("--json", default=str(ROOT / "bench" / "gpu_check.json"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = args.peak_tflops or (bf16_peak(name) if device.type == "cuda" else None)
    if device.type == "cuda" and not peak:
        print(f"gpu_check: no bf16 peak known for {name}: pass --peak-tflops for the utilisation", flush=True)
    rows = []
    for family in args.families:
        print(f"[gpu_check] {family} ...", flush=True)
        rows.append(measure_family(family, device, peak, tiny=args.tiny, steps=args.steps))
        print(json.dumps(rows[-1]), flush=True)
    extra = {k: f"{v:.1f}" for k, v in measure_classifier(device, tiny=args.tiny, steps=args.steps).items()}
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    with tempfile.TemporaryDirectory() as tmp:
        if gpus >= 2 or device.type == "cpu":
            fake = None if device.type == "cuda" else ["fake0", "fake1"]
            extra["two concurrent jobs got GPUs"] = ", ".join(concurrent_jobs(f"{tmp}/locks", fake))
            extra["2-rank DDP run (1 epoch, small HistoGAN) s"] = f"{ddp_run(args.device, Path(tmp)):.1f}"
        else:
            extra["multi-GPU checks"] = f"skipped: {gpus} GPU visible"
    table = render(name, peak, rows, extra)
    print(table)
    with open(args.out, "a") as f:
        f.write("\n" + table)
    Path(args.json).write_text(json.dumps({"device": name, "peak_tflops": peak, "families": rows, **extra}, indent=1))


if __name__ == "__main__":
    main()
