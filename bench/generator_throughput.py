"""Generator training and generation throughput (images/s) at the paper's model sizes.

    .venv/bin/python bench/generator_throughput.py --family histogan --image-size 96 --batch-size 32
    .venv/bin/python bench/generator_throughput.py --family cgan --image-size 128 --batch-size 25
"""

import argparse
import json
import time

import torch

from histosynth.gan_training import ADAPTERS


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="histogan", choices=sorted(ADAPTERS))
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = ADAPTERS[args.family]({}, 2, args.image_size, 2e-4, (0.5, 0.999))
    model.G.to(device), model.D.to(device)
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device) * 2 - 1
    y = torch.randint(0, 2, (args.batch_size,), device=device)
    model.step(x, y, True)  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        model.step(x, y, True)
    sync()
    train = args.batch_size * args.steps / (time.perf_counter() - t0)
    model.G.eval()
    with torch.no_grad():
        z = torch.randn(256, model.z_dim, device=device)
        yy = torch.randint(0, 2, (256,), device=device)
        model.G(z[:8], yy[:8])
        sync()
        t0 = time.perf_counter()
        model.G(z, yy)
        sync()
        gen = 256 / (time.perf_counter() - t0)
    print(json.dumps({"family": args.family, "device": str(device), "image_size": args.image_size,
                      "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                      "train_images_per_s": round(train, 1), "generate_images_per_s": round(gen, 1)}))


if __name__ == "__main__":
    main()
