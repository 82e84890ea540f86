"""Where does a ViT-cGAN snapshot lose z? Per generator stage, the rms of the residual stream
and its spread across z (same label), then the image's pixel std across z against within an
image, and the class-mean difference. A generator that ignores z shows a spread that stays
while the image's across-z std falls towards 0.

    .venv/bin/python bench/vitgan_probe.py results/convergence/demo/generators/vitgan/subset0/checkpoints/epoch_00070.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from histosynth.generative.models import vitgan  # noqa: E402


@torch.no_grad()
def stages(G: vitgan.ViTGenerator, z: torch.Tensor, y: torch.Tensor):
    """(name, activations) along G's forward pass (the same computation as ViTGenerator.forward)."""
    cfg, n = G.cfg, len(z)
    zz = z / vitgan.truncated_normal_std(cfg.tau) if cfg.normalize_z else z
    chunks = zz.chunk(vitgan.NUM_STAGES, dim=1)
    h = G.input(torch.cat([F.one_hot(y, cfg.num_classes).to(z.dtype), chunks[0] if cfg.class_projection else zz], 1))
    h = vitgan._to_map(h.view(n, G.s0**2, cfg.embed_dim), G.s0)
    yield "X0", h
    for k, (blocks, pos) in enumerate(zip(G.stages, G.pos)):
        h = F.interpolate(h, scale_factor=2, mode="bicubic", align_corners=False) if k == 0 else F.pixel_shuffle(h, 2)
        side = h.shape[-1]
        t = vitgan._to_tokens(h) + pos
        for block in blocks:
            t = block(t, y, chunks[k], (side, side))
        yield f"stage {k + 1} out", t
        h = vitgan._to_map(t, side)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("snapshot", type=Path)
    ap.add_argument("-n", type=int, default=64)
    args = ap.parse_args()
    state = torch.load(args.snapshot, weights_only=True, map_location="cpu")
    cfg = vitgan.ViTGANConfig(**state["model"])
    torch.manual_seed(0)
    z = vitgan.truncated_normal((args.n, cfg.z_dim), cfg.tau)
    y = torch.arange(args.n) % cfg.num_classes
    for name, G in [("init", vitgan.ViTGenerator(cfg)), ("snapshot", vitgan.ViTGenerator(cfg))]:
        if name == "snapshot":
            G.load_state_dict(state["G"])
        G.eval()
        for stage, a in stages(G, z, y):
            a = a.reshape(args.n, -1)
            print(f"{name:8s} {stage:12s} rms {a.pow(2).mean().sqrt():.3f}  spread across z {a[y == 0].std(0).mean():.4f}")
        with torch.no_grad():
            img = G(z, y)
        print(f"{name:8s} image: pixel std across z {img[y == 0].std(0).mean():.4f}, within an image "
              f"{img.std((2, 3)).mean():.4f}, class-mean difference {(img[y == 0].mean(0) - img[y == 1].mean(0)).abs().mean():.4f}")


if __name__ == "__main__":
    main()
