"""Rule vae_quality's measurement: the VAE's reconstructions of the reference's validation draw.

A module of its own: the VAE's training counts no measuring code, and the reference and
quality stages count no VAE code (histosynth.provenance hashes whole modules).
"""

from __future__ import annotations

from collections.abc import Mapping


def measure_vae(vae_path, vae_metrics, train, subset, valid, out, *, real, subset_index: int,
                images_per_class: int, ratio: float, quality: Mapping, batch_size: int, device: str) -> dict:
    """The VAE's reconstructions of the reference's kept-sized validation draw: what bounds latent diffusion."""
    import json

    import torch

    from histosynth.data.store import read_labels, read_store
    from histosynth.evaluation.features import extract_features
    from histosynth.evaluation.reference import reference_draws, write_vae_quality
    from histosynth.generative.vae_training import load_vae, reconstruct_images
    from histosynth.torch_utils import sampling_device

    device = torch.device(sampling_device(device))
    _, draws = reference_draws(train, subset, read_labels(valid), images_per_class=images_per_class, ratio=ratio,
                               seed=quality["seed"])
    images, _, class_names = read_store(valid, draws["kept"])
    vae, _ = load_vae(vae_path, device)
    recon = reconstruct_images(vae, images, batch_size)
    extractor, stats = real.spaces(len(class_names))["domain"]
    with open(vae_metrics) as f:
        psnr = json.load(f)["valid_psnr"]
    return write_vae_quality(out, stats["features"], extract_features(extractor, recon, batch_size, device),
                             subset=subset_index, quality=quality, psnr=psnr)
