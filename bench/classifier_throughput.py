"""Classifier training/evaluation throughput (images/s) of the code the pipeline runs.

Times `histosynth.classification.classifier` models fed by `BatchIterator` with traditional
augmentation: the whole training step as `train_classifier` does it (forward,
backward, SGD step; bf16 autocast and channels_last on CUDA).

    .venv/bin/python bench/classifier_throughput.py --image-size 96 --steps 20
"""

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from histosynth.classification.classifier import build_classifier, eval_batches, predict_proba
from histosynth.data.augment import AugmentConfig
from histosynth.data.batches import BatchIterator
from histosynth.torch_utils import pick_device


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--eval-batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20, help="timed training steps (after 3 warm-up steps)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    n = args.batch_size * (args.steps + 3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, args.image_size, args.image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, n)
    model = build_classifier(args.backbone, 2).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    batches = BatchIterator(images, labels, args.batch_size, shuffle=True, augment=AugmentConfig(),
                            seed=0, device=device, drop_last=True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model.train()
    for i, (x, y) in enumerate(batches):
        if i == 3:  # warm-up done (allocator, cuDNN autotuning)
            sync()
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    train_ips = args.batch_size * args.steps / (time.perf_counter() - t0)
    predict_proba(model, eval_batches(images[: args.eval_batch_size], args.eval_batch_size, device))  # warm-up
    batches = eval_batches(images, args.eval_batch_size, device)
    sync()
    t0 = time.perf_counter()
    predict_proba(model, batches)
    sync()
    eval_ips = n / (time.perf_counter() - t0)
    result = {"device": str(device), "backbone": args.backbone, "image_size": args.image_size,
              "batch_size": args.batch_size, "threads": torch.get_num_threads(),
              "train_images_per_s": round(train_ips, 1), "eval_images_per_s": round(eval_ips, 1)}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
