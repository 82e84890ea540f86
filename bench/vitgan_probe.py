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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from histosynth.generative.models import vitgan  # noqa: E402


@torch.no_grad()
def stages(G: vitgan.ViTGenerator, z: torch.Tensor, y: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(name, activations) of X0 and of each stage's output, caught by hooks on G's own forward pass."""
    caught = []
    layers = [("X0", G.input)] + [(f"stage {k + 1} out", blocks[-1]) for k, blocks in enumerate(G.stages)]
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: caught.append((name, out))) for name, m in layers]
    try:
        G(z, y)
    finally:
        for h in hooks:
            h.remove()
    return caught


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
