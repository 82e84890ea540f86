"""Overhead of the GPU slot allocator (histosynth.gpu_slots), on fake GPU lists.

  (a) acquire + release of 1 slot, 1 fake GPU, all free
  (b) acquire + release of 1 slot, 8 fake GPUs of which 7 are held by another
      holder (the worst case that still succeeds: 7 failed flocks first)
  (c) machine_gpus(): finding this machine's GPUs (nvidia-smi, else /proc)

    python bench/gpu_slots.py [--runs 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from histosynth.gpu_slots import gpu_slots, machine_gpus  # noqa: E402


def timed(fn, runs: int) -> dict:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return {"runs": runs, "mean_us": statistics.fmean(times) * 1e6, "median_us": times[runs // 2] * 1e6,
            "p99_us": times[int(runs * 0.99) - 1] * 1e6}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--json")
    args = ap.parse_args()
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    os.environ.pop("SLURM_JOB_ID", None)
    results = {"python": platform.python_version(), "cpus": os.cpu_count()}

    with tempfile.TemporaryDirectory() as lock_dir:
        def once(devices):
            with gpu_slots(1, lock_dir=lock_dir, devices=devices) as ids:
                assert len(ids) == 1

        results["1_gpu_free"] = timed(lambda: once(["0"]), args.runs)

        # Another "job" holds GPUs 0-6 (a separate open file each, as another process would).
        held = []
        for i in range(7):
            fd = os.open(os.path.join(lock_dir, f"gpu-{i}.lock"), os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(fd)
        eight = [str(i) for i in range(8)]
        with gpu_slots(1, lock_dir=lock_dir, devices=eight) as ids:
            assert ids == ["7"]
        results["8_gpus_7_held"] = timed(lambda: once(eight), args.runs)
        for fd in held:
            os.close(fd)

    results["machine_gpus"] = {**timed(machine_gpus, max(1, args.runs // 50)), "found": machine_gpus()}

    for name, r in results.items():
        if isinstance(r, dict):
            print(f"{name:14s} mean {r['mean_us']:9.1f} us  median {r['median_us']:9.1f} us  "
                  f"p99 {r['p99_us']:9.1f} us  ({r['runs']} runs)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
