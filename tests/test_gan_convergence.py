"""Do the GANs learn class-conditional images? Short runs of bench/gan_convergence.py's toy check.

Two colour classes with per-image variety: a generator that ignores its label, or
collapses to one colour, fails. (Full-length runs and figures: docs/benchmarks.md.)
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import histosynth.gan_training as gt

spec = importlib.util.spec_from_file_location("gan_convergence", Path(__file__).parents[1] / "bench/gan_convergence.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def train_toy(adapter, steps: int, batch: int = 32):
    torch.manual_seed(0)
    x, y = bench.toy_data(256, 32)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,))
        adapter.step(x[idx], y[idx], train_g=True)
    return bench.class_colours(adapter.G, adapter.z_dim, n=128)


@pytest.mark.slow
def test_cgan_learns_each_class_colour():
    torch.manual_seed(0)
    model = gt.CGANAdapter({"latent_dim": 32, "filters": 16, "d_filters": 16}, 2, 32, 2e-4, (0.5, 0.999))
    colours, spread = train_toy(model, 600)
    # Own class colour, not the average of both (which would be off by 0.15 per channel) ...
    assert np.abs(colours - bench.COLOURS).mean() < 0.08, colours
    assert np.abs(colours[0] - colours[1]).mean() > 0.2, colours
    # ... and not one picture per class.
    assert (spread > 0.005).all(), spread
