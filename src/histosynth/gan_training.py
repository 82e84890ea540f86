"""Generator training: one loop for every GAN family, checkpointed and resumable.

State lives in a checkpoint directory that is NOT a declared Snakemake output
(Snakemake deletes declared outputs before rerunning a job):
  resume.pt          full state after the last finished epoch (overwritten each epoch;
                     resume.prev.pt, the epoch before, is the fallback if it is damaged)
  epoch_00101.pt ... generator snapshots for checkpoint selection (every `save_every`
                     epochs after `save_from`), with the fixed evaluation noise
A killed job started again continues from resume.pt and, on CPU with the same seed,
ends with exactly
the weights of an uninterrupted run: data order and augmentation come from
(seed, epoch), and the torch RNG state is saved with every epoch.
Under torchrun (WORLD_SIZE > 1) the same loop runs as one rank of a
DistributedDataParallel run: see histosynth.distributed.
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

from . import distributed as ddp
from .batches import BatchIterator, pick_device
from .checkpoint import (list_checkpoints, load_resume_state, rng_state, save_checkpoint, save_resume_state,
                         set_rng_state)
from .errors import InputError
from .fileio import write_text

@dataclass(frozen=True)
class GANTrainConfig:
    family: str = "histogan"
    model: dict = field(default_factory=dict)  # the family's model config fields
    epochs: int = 1000
    batch_size: int = 256
    lr: float = 2e-4
    betas: tuple = (0.5, 0.999)
    n_critic: int = 1  # critic updates per generator update
    save_from: int = 100  # snapshots for selection after this epoch ...
    save_every: int = 1  # ... every this many epochs (HistoGAN: every epoch after 100)
    n_eval_noise: int = 64  # fixed noise stored with every snapshot (sample grids)
    seed: int = 0
    device: str = "auto"
    # bfloat16 autocast for forward passes on CUDA GPUs that support it (Ampere and later);
    # the WGAN-GP penalty always runs in float32. fp16-only GPUs train in float32: fp16's
    # range under a double backward needs loss scaling that the penalty does not tolerate well.
    amp: bool = True
    diffusion: dict = field(default_factory=dict)  # latent diffusion only: histosynth.ldm.DiffusionTrainConfig
    code: str = ""  # hash of the stage's modules (provenance.py): edited code never resumes an old run


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype for this device, or None for full float32."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


class _Adapter:
    """What the loop needs from a GAN family: its models, Adam optimisers and one training step."""

    def __init__(self, config_cls, build, model_cfg: dict, num_classes: int, image_size: int, lr, betas, amp=None):
        self.cfg = config_cls(**{**model_cfg, "num_classes": num_classes, "image_size": image_size})
        self.G, self.D = build(self.cfg)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=lr, betas=betas)
        self.amp = amp
        self.G_run, self.D_run = self.G, self.D  # what step() trains through: these, or DDP wrappers

    def distribute(self, wrap) -> None:
        """Several processes (histosynth.distributed): train through DistributedDataParallel wrappers.

        The bare networks stay for state_dict and snapshots. Critics keep per-rank batch
        statistics: SyncBatchNorm has no double backward, which the gradient penalty needs.
        """
        self.G_run, self.D_run = wrap(self.G), wrap(self.D, sync_bn=False)

    def autocast(self, x):
        return torch.autocast(x.device.type, dtype=self.amp, enabled=self.amp is not None)

    def to(self, device):
        self.G.to(device), self.D.to(device)

    def train(self):
        self.G.train(), self.D.train()

    def state_dict(self) -> dict:
        """Everything a resumed run needs (with the RNG state, saved by the loop)."""
        return {"G": self.G.state_dict(), "D": self.D.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])

    def snapshot(self) -> dict:
        """What generation needs from this epoch (histosynth.generate.load_generator reads it)."""
        return {"G": self.G.state_dict(), "model": asdict(self.cfg)}


class HistoGANAdapter(_Adapter):
    """HistoGAN: WGAN-GP critics on every stage."""

    def __init__(self, *args, **kwargs):
        from .models import histogan

        self.h = histogan
        super().__init__(histogan.HistoGANConfig, histogan.build_histogan, *args, **kwargs)
        self.z_dim = self.cfg.z_dim

    def distribute(self, wrap) -> None:
        # One wrapper per stage critic (D is a ModuleList, which has no forward of its own).
        self.G_run, self.D_run = wrap(self.G), [wrap(d, sync_bn=False) for d in self.D]

    def step(self, x, y, train_g: bool) -> dict:
        reals = self.h.real_pyramid(x, self.cfg.stage_sizes)
        z = torch.randn(len(x), self.z_dim, device=x.device)
        with self.autocast(x):
            fakes = self.G_run(z, y)
            d_loss, _ = self.h.critic_loss(self.D_run, reals, fakes, y, gp_weight=self.cfg.gp_weight)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        losses = {"d_loss": d_loss.detach()}
        if train_g:
            with self.autocast(x):
                # The bare critics: their gradients from this loss are never used (zeroed before
                # the next critic step), so DDP need not average them.
                g_loss = self.h.generator_loss(self.D, fakes, y)
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            self.opt_g.step()
            losses["g_loss"] = g_loss.detach()
        return losses


class CGANAdapter(_Adapter):
    """The latent-to-image cGAN (BCE, non-saturating generator loss)."""

    def __init__(self, *args, **kwargs):
        from .models import cgan

        self.c = cgan
        super().__init__(cgan.CGANConfig, cgan.build_cgan, *args, **kwargs)
        self.z_dim = self.cfg.latent_dim

    def step(self, x, y, train_g: bool) -> dict:
        z = torch.randn(len(x), self.z_dim, device=x.device)
        # BCE-with-logits is autocast to float32; no double backward, so bf16 is safe throughout.
        with self.autocast(x):
            fake = self.G_run(z, y)
            d_loss, g_loss = self.c.cgan_losses(self.D_run, x, fake, y)
        # Both gradients first, each into its own network, then both steps: stepping D
        # before g_loss.backward() would modify tensors g_loss's graph still needs.
        self.opt_d.zero_grad(set_to_none=True)
        self.opt_g.zero_grad(set_to_none=True)
        d_loss.backward(inputs=list(self.D.parameters()))
        if train_g:
            g_loss.backward(inputs=list(self.G.parameters()))
        self.opt_d.step()
        if train_g:
            self.opt_g.step()
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}


class ViTGANAdapter(_Adapter):
    """ViT conditional GAN: WGAN-GP source head + class head with multi-loss weighting (eq. 7)
    over real and (confidence-selected, Algorithm 2) synthetic images; truncated z (τ)."""

    def __init__(self, *args, **kwargs):
        from .models import vitgan

        self.v = vitgan
        super().__init__(vitgan.ViTGANConfig, vitgan.build_vitgan, *args, **kwargs)
        self.z_dim = self.cfg.z_dim

    def step(self, x, y, train_g: bool) -> dict:
        z = self.v.truncated_normal((len(x), self.z_dim), self.cfg.tau, device=x.device)
        with self.autocast(x):
            fake = self.G_run(z, y)  # synthetic images of the batch's own labels
            # D_run(x) is D.d(x); through the wrapper of all of D, so DDP also averages sigma's gradient.
            d_loss, parts = self.v.discriminator_loss(self.D_run, self.D.mlw, x, y, fake.detach(), y,
                                                      self.cfg.gp_weight, self.cfg.confidence_lambda,
                                                      selective=self.cfg.selective)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        self.D.mlw.project_()
        losses = {"d_loss": d_loss.detach()}
        if train_g:
            with self.autocast(x):
                # Bare critic, as in HistoGAN; the class term weighted as the critic weighs it (eq. 8).
                g_loss = self.v.generator_loss(self.D.d, fake, y, torch.exp(-self.D.mlw.sigma[1]).detach())
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            self.opt_g.step()
            losses["g_loss"] = g_loss.detach()
        # Class-head accuracy on real images and confident synthetic images per batch (Algorithm 2).
        return {**losses, "acc_real": parts["acc_real"], "n_syn": parts["n_syn"]}

    def snapshot(self) -> dict:
        # The critic travels too: its class head is the `confidence` filter's and the
        # `unified` strategy's classifier (vit-cgan-unified-framework.md Algorithm 1).
        return {**super().snapshot(), "D": self.D.state_dict()}


def _ldm_adapter(backbone):
    def build(*args, **kwargs):
        from .ldm import LDMAdapter

        return LDMAdapter(backbone, *args, **kwargs)
    return build


LDM = ("ldm_unet", "ldm_dit")  # latent diffusion: a trained VAE comes in through `vae_path`
ADAPTERS = {"histogan": HistoGANAdapter, "cgan": CGANAdapter, "vitgan": ViTGANAdapter,
            **{b: _ldm_adapter(b) for b in LDM}}


def train_gan(images: np.ndarray, labels: np.ndarray, num_classes: int, ckpt_dir, losses_path,
              cfg: GANTrainConfig, vae_path=None) -> Path:
    """Train (or resume) a class-conditional generator on uint8 NHWC images; return the checkpoint dir.

    Latent diffusion families also need `vae_path`, the trained VAE (rule train_vae).
    """
    if cfg.family not in ADAPTERS:
        raise InputError(f"generator family '{cfg.family}' is not one of {sorted(ADAPTERS)}")
    if (cfg.family in LDM) != (vae_path is not None):
        raise InputError(f"generator family '{cfg.family}' {'needs' if cfg.family in LDM else 'takes no'} VAE")
    if not any((e - cfg.save_from) % cfg.save_every == 0 for e in range(cfg.save_from + 1, cfg.epochs + 1)):
        raise InputError(f"save_from ({cfg.save_from}), save_every ({cfg.save_every}) and epochs ({cfg.epochs}) "
                         "leave no checkpoint to save for selection")
    # Under torchrun (WORLD_SIZE > 1): one rank of a DistributedDataParallel run (histosynth.distributed).
    device = ddp.setup(pick_device(cfg.device))
    try:
        return _train_gan(images, labels, num_classes, Path(ckpt_dir), losses_path, cfg, vae_path, device)
    finally:
        ddp.teardown()


def _train_gan(images, labels, num_classes, ckpt_dir: Path, losses_path, cfg: GANTrainConfig, vae_path,
               device: torch.device) -> Path:
    main = ddp.is_main()  # the only process, or rank 0: logs and writes every file
    log = print if main else (lambda *a, **k: None)
    amp = amp_dtype(device, cfg.amp)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for what stays float32 (Ampere+)
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    log(f"[train_generator] device {device}, {'autocast ' + str(amp) if amp else 'float32'}")

    def fresh_model():
        torch.manual_seed(cfg.seed)
        m = ADAPTERS[cfg.family](cfg.model, num_classes, images.shape[1], cfg.lr, tuple(cfg.betas), amp,
                                 **({"vae_path": vae_path, "diffusion": cfg.diffusion} if cfg.family in LDM else {}))
        m.to(device)
        return m

    model = fresh_model()
    eval_noise = torch.randn(cfg.n_eval_noise, model.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
    eval_labels = torch.arange(cfg.n_eval_noise) % num_classes
    batches = BatchIterator(images, labels, cfg.batch_size, shuffle=True, augment=None, seed=cfg.seed,
                            device=device, drop_last=len(images) > cfg.batch_size)
    # The resolved model config (defaults included), not just what the user wrote: a
    # changed default must not resume weights of another architecture.
    run_key = json.dumps({**asdict(cfg), "model": asdict(model.cfg)}, sort_keys=True) + f"|n={len(images)}"
    if vae_path is not None:  # a retrained VAE changes the latent space: train afresh
        run_key += "|vae=" + hashlib.sha256(Path(vae_path).read_bytes()).hexdigest()

    history, start = [], 1
    state = load_resume_state(ckpt_dir / "resume.pt", run_key, "train_generator")
    if state is not None:
        try:
            model.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError) as e:
            # Same settings, different code (the model changed since the state was saved).
            log(f"[train_generator] resume state does not fit this model ({str(e)[:200]}); training from epoch 1")
            state, model = None, fresh_model()
    if state is not None:
        set_rng_state(state["rng"])
        eval_noise = state["eval_noise"]
        history, start = state["history"], state["epoch"] + 1
        log(f"[train_generator] resuming after epoch {state['epoch']}")
    elif main:
        # A fresh run: snapshots left by a run under other settings must not be scored.
        for _, old in list_checkpoints(ckpt_dir):
            old.unlink()
            print(f"[train_generator] removed stale snapshot {old}")
    if ddp.world_size() > 1:
        batches = ddp.shard(batches)
        ddp.check_agree(start, "the epoch to start from (resume.pt read differently?)")
        model.distribute(lambda module, **kw: ddp.wrap(module, device, **kw))
        log(f"[train_generator] DistributedDataParallel over {ddp.world_size()} processes: "
            f"batch_size {cfg.batch_size} is the global batch, split across them")
    batches.set_epoch(start - 1)

    for epoch in range(start, cfg.epochs + 1):
        model.train()
        ddp.seed_epoch(cfg.seed, epoch)  # several processes: per-rank noise (a no-op in one process)
        t0, sums, n = time.perf_counter(), {}, 0
        for i, (x, y) in enumerate(tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, mininterval=5,
                                        disable=not main)):
            losses = model.step(x * 2 - 1, y, train_g=(i % cfg.n_critic == cfg.n_critic - 1))
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v  # stays on device: no sync per step
            n += 1
        sums = ddp.reduce_logged(sums, device, summed={"n_syn"})  # means over ranks (counts: sums)
        row = {"epoch": epoch, **{k: float(v) / n for k, v in sums.items()}, "seconds": time.perf_counter() - t0}
        bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise RuntimeError(f"generator training diverged at epoch {epoch}: {', '.join(bad)} not finite "
                               f"({row}); lower the learning rate or resume from an earlier checkpoint")
        history.append(row)
        log("[train_generator] " + " ".join(f"{k}={v:.4g}" for k, v in row.items()))
        if main:
            if epoch > cfg.save_from and (epoch - cfg.save_from) % cfg.save_every == 0:
                save_checkpoint(ckpt_dir, epoch, {**model.snapshot(), "family": cfg.family,
                                                  "eval_noise": eval_noise, "eval_labels": eval_labels})
            save_resume_state(ckpt_dir / "resume.pt", {"key": run_key, "epoch": epoch, **model.state_dict(),
                                                       "rng": rng_state(), "eval_noise": eval_noise,
                                                       "history": history})
        ddp.barrier()

    if main:
        cols = list(history[0])
        write_text(losses_path, "\t".join(cols) + "\n" + "".join(
            "\t".join(f"{r.get(c, float('nan')):.6g}" if c != "epoch" else str(r[c]) for c in cols) + "\n"
            for r in history))
    ddp.barrier()
    return ckpt_dir
