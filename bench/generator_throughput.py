"""Generator training and generation throughput (images/s) at the paper's model sizes.

    .venv/bin/python bench/generator_throughput.py --family histogan --image-size 96 --batch-size 32
    .venv/bin/python bench/generator_throughput.py --family cgan --image-size 128 --batch-size 25
    .venv/bin/python bench/generator_throughput.py --family ldm_unet --image-size 96 --batch-size 64 --gen-images 16
    .venv/bin/python bench/generator_throughput.py --family ldm_dit --image-size 96 --batch-size 64 --gen-images 16

Latent diffusion: the schema-default VAE (untrained, 4x: 24x24x4 latents at 96 px)
and denoiser; a training step includes the VAE encoding; generation is DDIM with
--ddim-steps steps (50 by default, as in bulk generation) plus decoding.
"""

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from histosynth.generative.families import FAMILIES, family_module


def build(family: str, image_size: int, tmp: Path):
    """The training adapter of one family at default sizes."""
    if not FAMILIES[family].latent:
        return family_module(family).Trainer({}, 2, image_size, 2e-4, (0.5, 0.999))
    from histosynth.generative.models.vae import VAE, VAEConfig

    vae = VAE(VAEConfig(image_size=image_size))
    torch.save({"model": asdict(vae.cfg), "state": vae.state_dict(), "latent_scale": 1.0, "epoch": 0}, tmp / "vae.pt")
    model = family_module(family).Trainer({}, 2, image_size, 1e-4, (0.9, 0.999), vae_path=tmp / "vae.pt", diffusion={})
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="histogan", choices=sorted(FAMILIES))
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--gen-images", type=int, default=256)
    ap.add_argument("--ddim-steps", type=int, default=50)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = build(args.family, args.image_size, Path(tempfile.mkdtemp()))
    model.to(device)
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device) * 2 - 1
    y = torch.randint(0, 2, (args.batch_size,), device=device)
    model.step(x, y, True)  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        model.step(x, y, True)
    sync()
    train = args.batch_size * args.steps / (time.perf_counter() - t0)
    if FAMILIES[args.family].latent:
        G = family_module(args.family).load_generator({**model.snapshot(), "family": args.family}, device,
                                                      {"steps": args.ddim_steps})
    else:
        G = model.G
    G.eval()
    n = args.gen_images
    with torch.no_grad():
        z = torch.randn(n, model.z_dim, device=device)
        yy = torch.randint(0, 2, (n,), device=device)
        G(z[:2], yy[:2])
        sync()
        t0 = time.perf_counter()
        G(z, yy)
        sync()
        gen = n / (time.perf_counter() - t0)
    print(json.dumps({"family": args.family, "device": str(device), "image_size": args.image_size,
                      "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                      "train_images_per_s": round(train, 1), "generate_images_per_s": round(gen, 1)}))


if __name__ == "__main__":
    main()
