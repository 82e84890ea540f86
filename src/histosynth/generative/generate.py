"""Sampling from generator snapshots: bulk generation (per-checkpoint scoring, which samples the same
way, is histosynth.evaluation.scoring's).

Every generated image has its own seed (its latent is drawn from a generator
seeded with it), so any single image of a pool can be regenerated later.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from histosynth.checkpoint import load_checkpoint
from histosynth.data.store import write_store
from histosynth.errors import InputError
from histosynth.fileio import atomic_path
from histosynth.generative.families import FAMILIES, family_module


def load_generator(snapshot_path, device="cpu", sampling: dict | None = None) -> torch.nn.Module:
    """The generator of a training snapshot (epoch_XXXXX.pt), in eval mode.

    `sampling`: latent diffusion's sampler settings (histosynth.generative.ldm.SamplingConfig);
    they are not part of the snapshot (training's scoring and generation pass them).
    """
    try:
        state = load_checkpoint(snapshot_path)
        family = state["family"]
    except Exception as e:
        raise InputError(f"{snapshot_path}: not a generator snapshot ({e})") from e
    if family not in FAMILIES:
        raise InputError(f"{snapshot_path}: unknown generator family '{family}'")
    return family_module(family).load_generator(state, device, sampling)


@torch.no_grad()
def sample_images(G: torch.nn.Module, labels: np.ndarray, seeds: np.ndarray, batch_size: int = 256,
                  device="cpu", progress: bool = False) -> np.ndarray:
    """uint8 NHWC images, image i from latent seed `seeds[i]` and class `labels[i]`."""
    device = torch.device(device)
    z_dim = getattr(G, "z_dim", None) or getattr(G.cfg, "z_dim", None) or G.cfg.latent_dim
    out = []
    for start in tqdm(range(0, len(labels), batch_size), desc="generate", disable=not progress, mininterval=5):
        stop = min(start + batch_size, len(labels))
        z = torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s)))
                         for s in seeds[start:stop]]).to(device)
        y = torch.as_tensor(labels[start:stop], dtype=torch.long, device=device)
        images = G(z, y)
        if isinstance(images, (list, tuple)):  # multi-stage generators: the finest stage
            images = images[-1]
        out.append(((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                   .permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


# Checkpoint scoring draws its latents from a stream of its own, so the images a snapshot was
# chosen on are never the first images of its pool (that would bias the pool's quality
# optimistically). Pools use seed * 1_000_003 + i (top-up draws continue past the pool), which
# stays far below 2**62 for the schema's seeds (< 2**31) and any pool size below 2**60.
SCORING_STREAM = 1 << 62


def image_seeds(seed: int, n: int, stream: int = 0) -> np.ndarray:
    """Per-image latent seeds of a draw of n images: stream + seed * 1_000_003 + i (int64)."""
    return np.int64(stream) + np.int64(seed) * 1_000_003 + np.arange(n, dtype=np.int64)


def class_labels(counts: dict[int, int]) -> np.ndarray:
    return np.concatenate([np.full(n, c, np.int64) for c, n in sorted(counts.items())])


def generate_pool(snapshot_path, counts: dict[int, int], class_names: list[str], out_h5, *, grid_png=None,
                  real=None, batch_size=256, device="cpu", seed=0, sampling=None) -> None:
    """Write `counts[c]` images of every class c to a canonical store, with per-image seeds.

    `grid_png`: the first 8 synthetic images per class, each class row under a row of
    real images from `real` = (images, labels) when given, for a side-by-side look.
    """
    G = load_generator(snapshot_path, device, sampling)
    labels = class_labels(counts)
    seeds = image_seeds(seed, len(labels))
    images = sample_images(G, labels, seeds, batch_size, device, progress=True)
    # Per-image latent seeds are stored, so any image of the pool can be regenerated.
    write_store(out_h5, images, labels, class_names,
                {"snapshot": str(snapshot_path), "seed": seed, "counts": {class_names[c]: n for c, n in counts.items()}},
                extra={"seeds": seeds.astype(np.int64)})
    if grid_png:
        rows = {}
        for c in sorted(counts):
            if real is not None:
                rows[f"{class_names[c]}, real"] = real[0][real[1] == c][:8]
            rows[f"{class_names[c]}, synthetic"] = images[labels == c][:8]
        save_grid(rows, grid_png, f"real vs synthetic, {snapshot_path}")


def save_grid(rows: dict[str, np.ndarray], path, title: str = "") -> None:
    """One row of images per class, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(max(len(v) for v in rows.values()), 1)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.2 * cols, 1.3 * len(rows)), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_axis_off()
            if c < len(images):
                ax.imshow(images[c])
        axes[r, 0].set_title(name, loc="left", fontsize=9)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def generate_selected(choice_path, train, subset, out_h5, grid_png, *, ratio: float, pool_factor: float,
                      batch_size: int, device: str, seed: int, sampling=None) -> None:
    """The pool of the selected snapshot: pool_factor·r·N_i images of each class i, N_i the real
    images of class i in the subset, and the real-vs-synthetic grid."""
    from histosynth.checkpoint import selected_snapshot
    from histosynth.data.split import read_subset
    from histosynth.data.store import read_store
    from histosynth.evaluation.draws import target_counts
    from histosynth.torch_utils import sampling_device

    _, snapshot = selected_snapshot(choice_path)
    real_images, labels, class_names = read_store(train, read_subset(subset))
    # HistoGAN: a pool of 4 r N_i per class; a whole multiple of the filters' target round(r N_i),
    # so HistoGAN's two halvings land on it exactly.
    counts = {c: int(round(pool_factor * n)) for c, n in target_counts(labels, len(class_names), ratio).items()}
    generate_pool(snapshot, counts, class_names, out_h5, grid_png=grid_png, real=(real_images, labels),
                  batch_size=batch_size, device=sampling_device(device), seed=seed, sampling=sampling)
