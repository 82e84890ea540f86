"""Does a GAN family learn class-conditional images at all? A quick CPU check.

Two classes of 32 px textured images with different colours (pink and purple,
like eosin- and haematoxylin-rich tissue), per-image brightness and smooth
noise. A working conditional GAN must learn each class's own colour (not one
average colour for both) and some per-image variety. Printed every `--every`
steps: losses, the mean colour of generated images per class (real: 0.90 0.50
0.70 and 0.40 0.20 0.60) and the spread of per-image mean colours (real: about
0.06; 0 means collapse).

    .venv/bin/python bench/gan_convergence.py histogan --steps 1500 [--gp-weight 10]
    .venv/bin/python bench/gan_convergence.py cgan --steps 1200

With `--real TRAIN.h5 SUBSET.npy` it trains on real patches instead (area-
downsampled to 32 px; e.g. the demo's results/demo/data/train.h5 and
results/demo/subsets/subset0.npy) and compares with their class colours:

    .venv/bin/python bench/gan_convergence.py histogan --steps 800 --every 100 --threads 1 \
        --real results/demo/data/train.h5 results/demo/subsets/subset0.npy --d-norm batch
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from histosynth.generative.families import FAMILIES, family_module  # noqa: E402

COLOURS = np.array([[0.9, 0.5, 0.7], [0.4, 0.2, 0.6]])
MODELS = {
    "histogan": {"g_channels": 16, "d_channels": 16, "d_max_mult": 4, "z_dim": 32, "g_up_blocks": 3,
                 "g_res_blocks": 1, "mbd_kernels": 8, "mbd_kernel_dim": 3},
    "cgan": {"latent_dim": 64, "filters": 32, "d_filters": 32},
}


def toy_data(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, size, size) images in [-1, 1] and labels 0/1."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    base = COLOURS[y][:, None, None, :] * rng.uniform(0.8, 1.1, (n, 1, 1, 1))
    noise = F.interpolate(torch.from_numpy(rng.normal(size=(n, 1, size // 4, size // 4))).float(),
                          size=(size, size), mode="bilinear").numpy()[:, 0, :, :, None]
    x = np.clip(base + 0.15 * noise, 0, 1)
    return torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2) * 2 - 1, torch.from_numpy(y)


def real_data(train_h5, subset_npy) -> tuple[torch.Tensor, torch.Tensor]:
    """Real patches of a subset, area-downsampled to 32 px, in [-1, 1], with labels."""
    from histosynth.data.split import read_subset
    from histosynth.data.store import read_store

    images, labels, _ = read_store(train_h5, read_subset(subset_npy))
    x = F.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, size=(32, 32), mode="area")
    return x * 2 - 1, torch.from_numpy(labels)


@torch.no_grad()
def class_colours(G, z_dim: int, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-class mean colour (2, 3) and spread of per-image mean colours (2,) of G's samples, in [0, 1]."""
    G.eval()
    y = torch.arange(n) % 2
    x = G(torch.randn(n, z_dim), y)
    x = (x[-1] if isinstance(x, list) else x).add(1).div(2).mean((2, 3))  # (n, 3) per-image colour
    G.train()
    return (np.stack([x[y == c].mean(0).numpy() for c in (0, 1)]),
            np.array([x[y == c].std(0).mean().item() for c in (0, 1)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("family", choices=sorted(f for f in FAMILIES if not FAMILIES[f].latent))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--every", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gp-weight", type=float, default=None, help="HistoGAN WGAN-GP weight (default: the model's, 50)")
    ap.add_argument("--d-norm", choices=["batch", "layer"], default=None, help="HistoGAN critic norm (default: layer)")
    ap.add_argument("--real", nargs=2, metavar=("TRAIN_H5", "SUBSET_NPY"), help="train on real patches")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    target = COLOURS
    if args.real:
        x, y = real_data(*args.real)
        target = np.stack([((x[y == c] + 1) / 2).mean((0, 2, 3)).numpy() for c in (0, 1)])
    else:
        x, y = toy_data(512, 32)
    model_cfg = dict(MODELS[args.family])
    for key, value in (("gp_weight", args.gp_weight), ("d_norm", args.d_norm)):
        if value is not None:
            model_cfg[key] = value
    model = family_module(args.family).Trainer(model_cfg, 2, 32, 2e-4, (0.5, 0.999))
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(x), (args.batch,))
        losses = model.step(x[idx], y[idx], train_g=True)
        if step % args.every == 0:
            colours, spread = class_colours(model.G, model.z_dim)
            error = np.abs(colours - target).mean()
            print(f"step {step:5d}  " + "  ".join(f"{k} {float(v):8.3f}" for k, v in losses.items())
                  + f"  colour error {error:.3f}  class 0 {np.round(colours[0], 2)}  class 1 {np.round(colours[1], 2)}"
                  + f"  spread {np.round(spread, 3)}  {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
