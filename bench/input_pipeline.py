"""Input-pipeline throughput: torchvision PCAM + DataLoader vs in-memory BatchIterator.

Both read the same PCam-layout HDF5 files (synthetic textured 96x96 patches,
written to a temp dir in the real files' names and keys) and produce one epoch
of augmented float batches: flips, a random multiple of 90 degrees, colour
jitter (0.25, 0.25, 0.25, 0.04).

  (a) reference: torchvision.datasets.PCAM with per-image v2 transforms through
      torch.utils.data.DataLoader(shuffle=True, num_workers=--workers)
  (b) ours: x/y read into memory with h5py, then histosynth BatchIterator with
      AugmentConfig() (whole-batch tensor augmentation); read time included

    python bench/input_pipeline.py [--n 16384] [--batch-size 32] [--workers 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import h5py
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.transforms import v2

from histosynth.data.augment import AugmentConfig
from histosynth.data.batches import BatchIterator

X_FILE = "camelyonpatch_level_2_split_train_x.h5"
Y_FILE = "camelyonpatch_level_2_split_train_y.h5"


def write_pcam(root: str, n: int, seed: int = 0, block: int = 1024) -> None:
    """PCam-layout train split: x uint8 (n, 96, 96, 3), y uint8 (n, 1, 1, 1)."""
    os.makedirs(os.path.join(root, "pcam"), exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    with h5py.File(os.path.join(root, "pcam", X_FILE), "w") as f:
        x = f.create_dataset("x", (n, 96, 96, 3), np.uint8, chunks=(32, 96, 96, 3))
        for lo in range(0, n, block):
            b = min(block, n - lo)
            # H&E-ish texture: a pink/purple base, smooth blobs (cells, stroma), pixel noise.
            base = torch.tensor([0.85, 0.6, 0.8]).view(3, 1, 1) + 0.1 * torch.randn(b, 3, 1, 1, generator=g)
            blobs = F.interpolate(torch.randn(b, 3, 12, 12, generator=g), size=96, mode="bicubic")
            img = base + 0.15 * blobs + 0.05 * torch.randn(b, 3, 96, 96, generator=g)
            x[lo:lo + b] = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    with h5py.File(os.path.join(root, "pcam", Y_FILE), "w") as f:
        f.create_dataset("y", data=np.random.default_rng(seed).integers(0, 2, (n, 1, 1, 1), dtype=np.uint8))


class RandomRot90(torch.nn.Module):
    """torch.rot90 by a random multiple of 90 degrees (no interpolation, unlike RandomRotation)."""

    def forward(self, x):
        return torch.rot90(x, int(torch.randint(4, ())), dims=(-2, -1))


def reference(root: str, batch_size: int, workers: int) -> tuple[int, float]:
    transform = v2.Compose([
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
        v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90(),
        v2.ColorJitter(0.25, 0.25, 0.25, 0.04),
    ])
    t0 = time.perf_counter()
    dataset = torchvision.datasets.PCAM(root, split="train", transform=transform, download=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    n = sum(len(y) for _, y in loader)
    return n, time.perf_counter() - t0


def ours(root: str, batch_size: int) -> tuple[int, float, float]:
    t0 = time.perf_counter()
    with h5py.File(os.path.join(root, "pcam", X_FILE), "r") as f:
        images = f["x"][:]
    with h5py.File(os.path.join(root, "pcam", Y_FILE), "r") as f:
        labels = f["y"][:].reshape(-1).astype(np.int64)
    read_s = time.perf_counter() - t0
    batches = BatchIterator(images, labels, batch_size, shuffle=True, augment=AugmentConfig(), seed=0)
    n = sum(len(y) for _, y in batches)
    return n, time.perf_counter() - t0, read_s


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16384, help="synthetic images")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as root:
        write_pcam(root, args.n)
        n_ref, ref_s = reference(root, args.batch_size, args.workers)
        n_ours, ours_s, read_s = ours(root, args.batch_size)
    assert n_ref == n_ours == args.n

    figures = {
        "n": args.n, "batch_size": args.batch_size, "workers": args.workers,
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
        "reference_s": ref_s, "reference_images_per_s": n_ref / ref_s,
        "ours_s": ours_s, "ours_read_s": read_s, "ours_images_per_s": n_ours / ours_s,
        "ours_images_per_s_excl_read": n_ours / (ours_s - read_s),
        "ratio": ref_s / ours_s,
    }
    print(f"reference (torchvision PCAM + DataLoader, {args.workers} workers): "
          f"{figures['reference_images_per_s']:8.0f} images/s ({ref_s:.1f} s)")
    print(f"ours (h5py read + BatchIterator):                       "
          f"{figures['ours_images_per_s']:8.0f} images/s ({ours_s:.1f} s, of which read {read_s:.2f} s)")
    print(f"ratio ours / reference: {figures['ratio']:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
