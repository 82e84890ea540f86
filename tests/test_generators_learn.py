"""The GANs learn: after a short training run through the real loop, samples depend on z and on
the label. This is the check that shapes-and-one-step tests cannot make: the ViT-cGAN once
collapsed to one image per class within 50 steps (pixel std across z 0.014 of the std within
an image) while every unit test passed.

The data: two classes of 16 px "tissue", pink with few dark nuclei and purple with many, nuclei
at random places, so real images differ from each other as much as within themselves.
"""

import numpy as np
import pytest
import torch

from histosynth.checkpoint import list_checkpoints
from histosynth.config_schema import train_config
from histosynth.generative.generate import load_generator, sample_images
from histosynth.generative.training import train_gan


def toy_tissue(n_per_class=48, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images, labels = [], []
    yy, xx = np.mgrid[:size, :size]
    for label, (background, nuclei) in enumerate((((230, 150, 190), 2), ((170, 110, 190), 6))):
        for _ in range(n_per_class):
            img = np.zeros((size, size, 3)) + background + rng.normal(0, 8, (size, size, 3))
            for _ in range(nuclei + rng.integers(0, 2)):
                cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(1.5, 3)]
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (70, 40, 110)
            images.append(img)
            labels.append(label)
    return np.clip(images, 0, 255).astype(np.uint8), np.array(labels)


def spread_and_label_effect(G, n=32):
    """(pixel std across z for one label / pixel std within an image, mean |class-mean image difference|)."""
    labels = np.repeat([0, 1], n)
    x = sample_images(G, labels, np.arange(2 * n) + 10_000).astype(np.float64) / 255
    spread = np.mean([x[labels == c].std(0).mean() for c in (0, 1)]) / x.std((1, 2)).mean()
    return spread, np.abs(x[labels == 0].mean(0) - x[labels == 1].mean(0)).mean()


FAMILIES = {
    "histogan": dict(model={"g_channels": 8, "d_channels": 8, "d_max_mult": 2, "z_dim": 16, "g_up_blocks": 2,
                            "g_res_blocks": 1, "mbd_kernels": 4, "mbd_kernel_dim": 3}, epochs=15),
    "cgan": dict(model={"latent_dim": 32, "filters": 32, "d_filters": 32, "num_up": 2}, epochs=25),
    "vitgan": dict(model={"z_dim": 16, "embed_dim": 256, "depth": 1, "num_heads": 2, "d_embed_dim": 32,
                          "d_patch_size": 2}, epochs=12, lr=1e-4, betas=(0.0, 0.99)),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_samples_depend_on_z_and_label_after_training(family, tmp_path):
    torch.set_num_threads(1)
    x, y = toy_tissue()
    settings = FAMILIES[family]
    cfg = train_config(family=family, batch_size=16, save_from=settings["epochs"] - 1, device="cpu",
                       **settings)  # 6 steps an epoch
    train_gan(x, y, 2, tmp_path / "ckpt", tmp_path / "losses.tsv", cfg)
    G = load_generator(list_checkpoints(tmp_path / "ckpt")[-1][1])
    real_spread = np.mean([(x[y == c] / 255).std(0).mean() for c in (0, 1)]) / (x / 255).std((1, 2)).mean()
    spread, label_effect = spread_and_label_effect(G)
    assert spread > 0.15 * real_spread, f"{family} ignores z: spread {spread:.3f} (real {real_spread:.3f})"
    assert label_effect > 0.01, f"{family} ignores the label: {label_effect:.4f}"


def test_the_check_fails_the_collapsed_vitgan(tmp_path):
    """The same run with the ViT-cGAN as first written (TransGAN's 0.02 input init, no
    minibatch std, z shrunk by truncation) gives one image per label: the check above must
    fail it, or it could not have caught the collapse."""
    torch.set_num_threads(1)
    x, y = toy_tissue()
    settings = {**FAMILIES["vitgan"], "model": {**FAMILIES["vitgan"]["model"], "input_std": 0.02,
                                                "minibatch_std": False, "normalize_z": False}}
    cfg = train_config(family="vitgan", batch_size=16, save_from=settings["epochs"] - 1, device="cpu", **settings)
    train_gan(x, y, 2, tmp_path / "ckpt", tmp_path / "losses.tsv", cfg)
    spread, _ = spread_and_label_effect(load_generator(list_checkpoints(tmp_path / "ckpt")[-1][1]))
    assert spread < 0.05
