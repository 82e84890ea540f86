"""VAE stage of the latent diffusion model: train, resume after a kill, measure, save.

The latent-diffusion PCam paper (§4.2) trains the VAE on the real training subset
without labels (Adam, lr 1e-4, batch 64, 1000 epochs). This module trains the
AutoencoderKL of models/vae.py with the L1 + KL loss and then records what the
diffusion stage needs: the weights and the latent scale factor (Rombach et al.
2022 §4.3.2 / App. G: 1 / std of the latents, so diffusion sees unit-variance
latents).

With `resume_path`, the full state (weights, optimiser, RNG, history) is written
there after every epoch; a killed job started again continues from it and, on CPU,
ends with exactly the weights of an uninterrupted run: batch order comes from
(seed, epoch) and the RNG state that draws the posterior samples is saved.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from histosynth.checkpoint import remove_resume_state, resume_or_start, rng_state, save_resume_state
from histosynth.data.batches import BatchIterator
from histosynth.errors import InputError
from histosynth.fileio import atomic_path, write_history, write_json
from histosynth.generative.models.vae import VAE, VAEConfig, vae_loss
from histosynth.torch_utils import pick_device


@dataclass(frozen=True)
class VAETrainConfig:
    model: dict = field(default_factory=dict)  # VAEConfig fields except image_size (taken from the data)
    epochs: int = 1000  # paper; the schema's default (was 100 here, never what the pipeline ran)
    batch_size: int = 64  # paper
    lr: float = 1e-4  # paper (Adam)
    seed: int = 0
    device: str = "auto"
    code: str = ""  # hash of the stage's modules (provenance.py): edited code never resumes an old run


def build_vae_config(model: dict, image_size: int) -> VAEConfig:
    try:
        return VAEConfig(**{**model, "image_size": image_size})
    except (TypeError, ValueError) as e:  # unknown key, bad value
        raise InputError(f"VAE model settings {model}: {e}") from e


def _batches(images: np.ndarray, batch_size: int, device, *, shuffle: bool, seed: int = 0) -> BatchIterator:
    return BatchIterator(images, np.zeros(len(images), np.int64), batch_size, shuffle=shuffle, augment=None,
                         seed=seed, device=device, drop_last=shuffle and len(images) > batch_size)


@torch.no_grad()
def encode_images(vae: VAE, images: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """Posterior means (N, latent_channels, h, w) of uint8 NHWC images, on the VAE's device, unscaled."""
    vae.eval()
    device = next(vae.parameters()).device
    return torch.cat([vae.encode(x * 2 - 1)[0] for x, _ in _batches(images, batch_size, device, shuffle=False)])


@torch.no_grad()
def latent_scale_of(vae: VAE, images: np.ndarray, batch_size: int) -> tuple[float, float, float]:
    """(1 / std, mean, largest |element|) over all elements of the posterior means of `images`.

    Computed from running float64 sums rather than a stored latent set (a 10% PCam
    subset at 4x is ~240 MB of latents). The means, not posterior samples: with
    the small KL weight the posterior std is tiny next to the spread of the means.
    """
    vae.eval()
    device = next(vae.parameters()).device
    total, sq, n, peak = 0.0, 0.0, 0, 0.0
    for x, _ in _batches(images, batch_size, device, shuffle=False):
        m = vae.encode(x * 2 - 1)[0].double()
        total, sq, n = total + float(m.sum()), sq + float(m.pow(2).sum()), n + m.numel()
        peak = max(peak, float(m.abs().max()))
    mean = total / n
    std = math.sqrt(max(sq / n - mean**2, 0.0))
    if not std > 0:
        raise RuntimeError("VAE latents have zero variance: cannot compute the latent scale factor")
    return 1.0 / std, mean, peak


def _reconstruct(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """decode(posterior mean) of images in [0, 1], clamped, in [0, 1]."""
    return (vae.decode(vae.encode(x * 2 - 1)[0]).clamp(-1, 1) + 1) / 2


@torch.no_grad()
def reconstruct_images(vae: VAE, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 NHWC reconstructions decode(posterior mean) of uint8 NHWC images: the best a
    latent-diffusion model decoded by this VAE can give back."""
    vae.eval()
    device = next(vae.parameters()).device
    return np.concatenate([(_reconstruct(vae, x) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                           for x, _ in _batches(images, batch_size, device, shuffle=False)])


@torch.no_grad()
def reconstruction_metrics(vae: VAE, images: np.ndarray, batch_size: int) -> dict:
    """Mean absolute error, MSE (pixels in [0, 1]) and PSNR (dB, from the pooled MSE) of
    deterministic reconstructions decode(posterior mean), clamped to the pixel range."""
    vae.eval()
    device = next(vae.parameters()).device
    abs_sum, sq_sum, n = 0.0, 0.0, 0
    for x, _ in _batches(images, batch_size, device, shuffle=False):
        recon = _reconstruct(vae, x).double()
        diff = recon - x.double()
        abs_sum, sq_sum, n = abs_sum + float(diff.abs().sum()), sq_sum + float(diff.pow(2).sum()), n + diff.numel()
    mse = sq_sum / n
    return {"mae": abs_sum / n, "mse": mse, "psnr": 10 * math.log10(1.0 / mse) if mse > 0 else math.inf}


def train_vae(images: np.ndarray, valid_images: np.ndarray, cfg: VAETrainConfig, *,
              model_path, losses_path, metrics_path, resume_path=None) -> dict:
    """Train the VAE on uint8 NHWC `images`; write weights, per-epoch losses and metrics; return the metrics.

    model_path: torch file {"model": VAEConfig fields, "state": state dict, "latent_scale",
    "latent_range", "epoch"} (loads with weights_only=True; see load_vae). losses_path: TSV epoch, loss,
    recon, kl, seconds. metrics_path: JSON with the validation reconstruction error of
    `valid_images`, written last (its presence means the job finished).
    """
    images, valid_images = np.asarray(images), np.asarray(valid_images)
    for name, a in (("training", images), ("validation", valid_images)):
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3 or a.shape[1] != a.shape[2] or not len(a):
            raise InputError(f"VAE {name} images must be a non-empty uint8 (N, S, S, 3) array, "
                             f"got {a.dtype} {a.shape}")
    if valid_images.shape[1:] != images.shape[1:]:
        raise InputError(f"VAE validation images {valid_images.shape[1:]} differ in size from "
                         f"the training images {images.shape[1:]}")
    device = pick_device(cfg.device)
    vcfg = build_vae_config(cfg.model, images.shape[1])
    print(f"[train_vae] device {device}, {len(images)} training images, "
          f"latents {vcfg.latent_channels}x{vcfg.latent_size}x{vcfg.latent_size}")

    def fresh():
        torch.manual_seed(cfg.seed)
        m = VAE(vcfg).to(device)
        return m, torch.optim.Adam(m.parameters(), lr=cfg.lr)

    model, opt = fresh()
    batches = _batches(images, cfg.batch_size, device, shuffle=True, seed=cfg.seed)
    # The resolved model config (defaults included) and the data itself: a resume state
    # from other settings, architecture defaults or images must not be continued.
    run_key = json.dumps({**asdict(cfg), "model": asdict(vcfg), "n": len(images),
                          "data": hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()}, sort_keys=True)

    def restore(objects, state):
        objects[0].load_state_dict(state["model"])
        objects[1].load_state_dict(state["optimizer"])

    (model, opt), state = resume_or_start(resume_path, run_key, "train_vae", (model, opt), restore=restore,
                                          fresh=fresh)
    history, start = (state["history"], state["epoch"] + 1) if state else ([], 1)

    for epoch in range(start, cfg.epochs + 1):
        batches.set_epoch(epoch - 1)  # this epoch's order, as in an uninterrupted run
        model.train()
        t0, sums, n = time.perf_counter(), torch.zeros(3, dtype=torch.float64, device=device), 0
        for x, _ in tqdm(batches, desc=f"vae epoch {epoch}/{cfg.epochs}", leave=False, mininterval=5):
            x = x * 2 - 1
            recon, mean, logvar = model(x)
            loss, rec, kl = vae_loss(x, recon, mean, logvar, vcfg.kl_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.stack([loss.detach(), rec.detach(), kl.detach()]).double()  # no device sync per step
            n += 1
        loss, rec, kl = (sums / n).tolist()
        row = {"epoch": epoch, "loss": loss, "recon": rec, "kl": kl, "seconds": time.perf_counter() - t0}
        bad = [k for k in ("loss", "recon", "kl") if not math.isfinite(row[k])]
        if bad:
            raise RuntimeError(f"VAE training diverged at epoch {epoch}: {', '.join(bad)} not finite "
                               f"({row}); lower the learning rate")
        history.append(row)
        print("[train_vae] " + " ".join(f"{k}={v:.4g}" for k, v in row.items()))
        if resume_path:
            save_resume_state(resume_path, {"key": run_key, "epoch": epoch, "model": model.state_dict(),
                                            "optimizer": opt.state_dict(), "rng": rng_state(), "history": history})

    scale, latent_mean, peak = latent_scale_of(model, images, cfg.batch_size)
    latent_range = peak * scale  # largest |scaled latent|: the default x0 clamp of the samplers (histosynth.generative.ldm)
    valid = reconstruction_metrics(model, valid_images, cfg.batch_size)
    config = asdict(vcfg)
    config["channel_mults"] = list(vcfg.channel_mults)
    with atomic_path(model_path) as tmp:
        torch.save({"model": config, "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "latent_scale": scale, "latent_range": latent_range, "epoch": cfg.epochs}, tmp)
    write_history(losses_path, history)
    metrics = {"valid_mae": valid["mae"], "valid_mse": valid["mse"], "valid_psnr": valid["psnr"],
               "latent_scale": scale, "latent_mean": latent_mean, "latent_range": latent_range,
               "latent_shape": [vcfg.latent_channels, vcfg.latent_size, vcfg.latent_size],
               "n_train": int(len(images)), "n_valid": int(len(valid_images)), "epochs": cfg.epochs,
               "model": config, "device": str(device)}
    write_json(metrics_path, metrics)  # written last: its presence means the job finished
    if resume_path:
        remove_resume_state(resume_path)
    print(f"[train_vae] latent_scale={scale:.4g} valid MAE={valid['mae']:.4g} PSNR={valid['psnr']:.2f} dB")
    return metrics


def load_vae(path, device="cpu") -> tuple[VAE, float]:
    """(VAE in eval mode on `device`, latent_scale) from a file written by train_vae."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: VAE checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or not {"model", "state", "latent_scale"} <= set(ckpt):
            raise ValueError("missing keys 'model', 'state', 'latent_scale'")
        vae = VAE(VAEConfig(**ckpt["model"]))
        vae.load_state_dict(ckpt["state"])
        scale = float(ckpt["latent_scale"])
    except Exception as e:  # not a torch file, pickle payload, other architecture, wrong keys
        raise InputError(f"{path}: not a VAE checkpoint written by train_vae ({type(e).__name__}: {e})") from e
    return vae.to(device).eval(), scale


def train_subset_vae(train, subset, valid, cfg: VAETrainConfig, *, model_path, losses_path, metrics_path,
                     resume_path) -> dict:
    """train_vae on the real `subset` of the `train` store, validated on the whole `valid` store."""
    from histosynth.data.split import read_subset
    from histosynth.data.store import read_store

    images, _, _ = read_store(train, read_subset(subset))
    valid_images, _, _ = read_store(valid)
    return train_vae(images, valid_images, cfg, model_path=model_path, losses_path=losses_path,
                     metrics_path=metrics_path, resume_path=resume_path)
