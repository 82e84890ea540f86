"""Fréchet distance per checkpoint: ours (real side factorised once) against pytorch-fid, side by side.

    python bench/frechet_distance.py            # d = 2048, 3 snapshots per case

Each case draws real and "snapshot" features (well- or ill-conditioned, full rank or with fewer
samples than dimensions), times pytorch_fid.fid_score.calculate_frechet_distance and
FrechetReference.distance on the same statistics, and prints the ratio and the relative
difference. The one-off factorisation of the real side is timed separately: scoring pays it once
per subset, not per snapshot.
"""

import argparse
import time

import numpy as np
from pytorch_fid.fid_score import calculate_frechet_distance

from histosynth.evaluation.metrics import FrechetReference


def features(rng, n, d, condition):
    return (rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d)) * np.logspace(0, -condition, d)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--snapshots", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| samples | condition | pytorch-fid s/snapshot | ours s/snapshot | ratio | real side once (s) | max rel. diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, condition in ((4000, 0), (4000, 4), (300, 0), (300, 3)):
        real = features(rng, n, args.dim, condition)
        real_sigma = np.cov(real, rowvar=False)
        t = time.perf_counter()
        reference = FrechetReference(real.mean(0), real_sigma)
        setup = time.perf_counter() - t
        theirs = ours = 0.0
        worst = 0.0
        for _ in range(args.snapshots):
            fake = features(rng, n, args.dim, condition) * 1.1 + 0.05
            mu, sigma = fake.mean(0), np.cov(fake, rowvar=False)
            t = time.perf_counter()
            a = calculate_frechet_distance(reference.mu, real_sigma, mu, sigma)
            theirs += time.perf_counter() - t
            t = time.perf_counter()
            b = reference.distance(mu, sigma)
            ours += time.perf_counter() - t
            worst = max(worst, abs(a - b) / abs(a))
        k = args.snapshots
        print(f"| {n} | 1e-{condition} | {theirs / k:.2f} | {ours / k:.2f} | {theirs / ours:.1f}x | {setup:.2f} | {worst:.1e} |")


if __name__ == "__main__":
    main()
