"""Generator training: one loop for every GAN family, checkpointed and resumable.

State lives in a checkpoint directory that is NOT a declared Snakemake output
(Snakemake deletes declared outputs before rerunning a job):
  resume.pt          full state after the last finished epoch (overwritten each epoch;
                     resume.prev.pt, the epoch before, is the fallback if it is damaged)
  epoch_00101.pt ... generator snapshots for checkpoint selection (every `save_every`
                     epochs after `save_from`), with the fixed evaluation noise
Given a scorer (histosynth.evaluation.scoring), every snapshot is scored as it is written
and only those that some selection metric and EMA alpha would choose stay on disk
(selection.kept_epochs: at most metrics x alphas of them, however long the run); the
scores go to checkpoint_scores.tsv at the end.
A killed job started again continues from resume.pt and, on CPU with the same seed,
ends with exactly the weights, scores and kept snapshots of an uninterrupted run: data
order and augmentation come from (seed, epoch), and the torch RNG state is saved with
every epoch (scoring leaves it untouched).
Under torchrun (WORLD_SIZE > 1) the same loop runs as one rank of a
DistributedDataParallel run: see histosynth.generative.distributed.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from histosynth.checkpoint import (checkpoint_path, list_checkpoints, remove_resume_state, resume_or_start,
                                  rng_state, save_checkpoint, save_resume_state)
from histosynth.data.augment import AugmentConfig
from histosynth.data.batches import BatchIterator
from histosynth.errors import InputError
from histosynth.evaluation.selection import kept_epochs
from histosynth.fileio import write_history, write_text
from histosynth.generative import distributed as ddp
from histosynth.generative.families import FAMILIES, family_module
from histosynth.generative.models.diffusion import ema_copy, update_ema
from histosynth.torch_utils import amp_dtype, pick_device

# The fields without a default differ between families: their defaults are each family's
# config section (generative/families/<family>.yaml; histosynth.config_schema.train_config
# builds one from it). The others agree in every family; tests/test_defaults.py checks both.
@dataclass(frozen=True, kw_only=True)
class GANTrainConfig:
    family: str
    model: dict = field(default_factory=dict)  # the family's model config fields
    epochs: int
    batch_size: int
    lr: float
    betas: tuple
    n_critic: int = 1  # critic updates per generator update
    # Half-life, in thousands of training images, of the moving average of the generator's
    # weights that snapshots hold and sample from (GANs only; 0 = the raw weights, as the
    # papers sample). GANTrainer.update_ema.
    ema_kimg: float = 0.0
    # Train on the real images under random flips and 90-degree rotations (tissue has no
    # canonical orientation): 8x the distinct images a small subset offers. The papers train
    # on the images as they are (false).
    dihedral: bool = False
    save_from: int  # snapshots for selection after this epoch ...
    save_every: int  # ... every this many epochs (HistoGAN: every epoch after 100)
    n_eval_noise: int = 64  # fixed noise stored with every snapshot (sample grids)
    seed: int = 0
    device: str = "auto"
    # bfloat16 autocast for forward passes on CUDA GPUs that support it (Ampere and later);
    # the WGAN-GP penalty always runs in float32. fp16-only GPUs train in float32: fp16's
    # range under a double backward needs loss scaling that the penalty does not tolerate well.
    amp: bool = True
    diffusion: dict = field(default_factory=dict)  # latent diffusion only: histosynth.generative.ldm.DiffusionTrainConfig
    code: str = ""  # hash of the stage's modules (provenance.py): edited code never resumes an old run


EMA_RAMPUP = 0.05  # the generator average's half-life is at most this fraction of the images seen


class GANTrainer:
    """What the loop needs from a GAN family (histosynth.generative.families): its models, Adam optimisers and
    one training step, which each family's `Trainer` adds."""

    def __init__(self, config_cls, build, model_cfg: dict, num_classes: int, image_size: int, lr, betas, amp=None,
                 ema_kimg: float = 0.0):
        self.cfg = config_cls(**{**model_cfg, "num_classes": num_classes, "image_size": image_size})
        self.G, self.D = build(self.cfg)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=lr, betas=betas)
        self.amp = amp
        self.G_run, self.D_run = self.G, self.D  # what step() trains through: these, or DDP wrappers
        self.ema_kimg, self.nimg = ema_kimg, 0  # nimg: training images the generator has been updated on
        self.G_ema = ema_copy(self.G) if ema_kimg > 0 else None

    def update_ema(self, batch_size: int) -> None:
        """After a generator step on `batch_size` images (per process): average G's weights into G_ema.

        The half-life is ema_kimg thousand images, but at most EMA_RAMPUP of the images seen so
        far, so early weights (noise) leave the average quickly (Karras et al., StyleGAN2-ADA
        and EDM). WGAN-GP with Adam beta1 = 0 moves G a lot from step to step; the average is
        what BigGAN and StyleGAN sample from.
        """
        batch_size *= ddp.world_size()  # the global batch (every rank holds the same weights)
        self.nimg += batch_size
        if self.G_ema is not None:
            halflife = min(self.ema_kimg * 1000, self.nimg * EMA_RAMPUP)
            update_ema(self.G_ema, self.G, 0.5 ** (batch_size / max(halflife, 1e-8)))

    def distribute(self, wrap) -> None:
        """Several processes (histosynth.generative.distributed): train through DistributedDataParallel wrappers.

        The bare networks stay for state_dict and snapshots. Critics keep per-rank batch
        statistics: SyncBatchNorm has no double backward, which the gradient penalty needs.
        """
        self.G_run, self.D_run = wrap(self.G), wrap(self.D, sync_bn=False)

    def autocast(self, x):
        return torch.autocast(x.device.type, dtype=self.amp, enabled=self.amp is not None)

    def to(self, device):
        self.G.to(device), self.D.to(device)
        if self.G_ema is not None:
            self.G_ema.to(device)

    def train(self):
        self.G.train(), self.D.train()

    def state_dict(self) -> dict:
        """Everything a resumed run needs (with the RNG state, saved by the loop)."""
        ema = {} if self.G_ema is None else {"G_ema": self.G_ema.state_dict()}
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), **ema, "nimg": self.nimg,
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if self.G_ema is not None:
            self.G_ema.load_state_dict(state["G_ema"])
        self.nimg = state["nimg"]
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])

    def snapshot(self) -> dict:
        """What generation needs from this epoch (histosynth.generative.generate.load_generator reads it):
        the generator that samples, its moving average when there is one."""
        return {"G": (self.G if self.G_ema is None else self.G_ema).state_dict(), "model": asdict(self.cfg)}


def train_gan(images: np.ndarray, labels: np.ndarray, num_classes: int, ckpt_dir, losses_path,
              cfg: GANTrainConfig, vae_path=None, scorer=None, scores_path=None, scoring_key: str = "") -> Path:
    """Train (or resume) a class-conditional generator on uint8 NHWC images; return the checkpoint dir.

    Latent diffusion families also need `vae_path`, the trained VAE (rule train_vae).
    `scorer(device)`, when given, builds the callable that scores a snapshot file
    (histosynth.evaluation.scoring.CheckpointScorer): snapshots are then scored as they are
    written, the scores written to `scores_path`, and only the snapshots a selection could
    choose are kept. Without it every snapshot is kept. `scoring_key`: what the scores depend
    on (scoring.spec_key); a run resumes only under the same one.
    """
    family = FAMILIES.get(cfg.family)
    if family is None:
        raise InputError(f"generator family '{cfg.family}' is not one of {list(FAMILIES)}")
    if family.latent != (vae_path is not None):
        raise InputError(f"generator family '{cfg.family}' {'needs' if family.latent else 'takes no'} VAE")
    if not any((e - cfg.save_from) % cfg.save_every == 0 for e in range(cfg.save_from + 1, cfg.epochs + 1)):
        raise InputError(f"save_from ({cfg.save_from}), save_every ({cfg.save_every}) and epochs ({cfg.epochs}) "
                         "leave no checkpoint to save for selection")
    # Under torchrun (WORLD_SIZE > 1): one rank of a DistributedDataParallel run (histosynth.generative.distributed).
    device = ddp.setup(pick_device(cfg.device))
    try:
        return _train_gan(images, labels, num_classes, Path(ckpt_dir), losses_path, cfg, vae_path, device, scorer,
                          scores_path, scoring_key)
    finally:
        ddp.teardown()


def _train_gan(images, labels, num_classes, ckpt_dir: Path, losses_path, cfg: GANTrainConfig, vae_path,
               device: torch.device, make_scorer, scores_path, scoring_key) -> Path:
    main = ddp.is_main()  # the only process, or rank 0: logs and writes every file
    log = print if main else (lambda *a, **k: None)
    amp = amp_dtype(device, cfg.amp)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for what stays float32 (Ampere+)
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    log(f"[train_generator] device {device}, {'autocast ' + str(amp) if amp else 'float32'}")

    def fresh_model():
        torch.manual_seed(cfg.seed)
        kind = ({"vae_path": vae_path, "diffusion": cfg.diffusion} if FAMILIES[cfg.family].latent
                else {"ema_kimg": cfg.ema_kimg})
        m = family_module(cfg.family).Trainer(cfg.model, num_classes, images.shape[1], cfg.lr, tuple(cfg.betas), amp,
                                              **kind)
        m.to(device)
        return m

    model = fresh_model()
    eval_noise = torch.randn(cfg.n_eval_noise, model.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
    eval_labels = torch.arange(cfg.n_eval_noise) % num_classes
    dihedral = AugmentConfig(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0) if cfg.dihedral else None
    batches = BatchIterator(images, labels, cfg.batch_size, shuffle=True, augment=dihedral, seed=cfg.seed,
                            device=device, drop_last=len(images) > cfg.batch_size)
    # The resolved model config (defaults included), not just what the user wrote: a
    # changed default must not resume weights of another architecture.
    run_key = json.dumps({**asdict(cfg), "model": asdict(model.cfg)}, sort_keys=True) + f"|n={len(images)}"
    if vae_path is not None:  # a retrained VAE changes the latent space: train afresh
        run_key += "|vae=" + hashlib.sha256(Path(vae_path).read_bytes()).hexdigest()
    if make_scorer is not None:  # the snapshots other scores would keep are gone: train afresh
        run_key += "|scoring=" + scoring_key

    model, state = resume_or_start(ckpt_dir / "resume.pt", run_key, "train_generator", model,
                                   restore=lambda m, s: m.load_state_dict(s), fresh=fresh_model, log=log)
    missing = [e for e in (state or {}).get("kept", []) if not checkpoint_path(ckpt_dir, e).is_file()]
    if missing:  # deleted by hand, or by a fresh run under other settings that died: its choices are lost
        log(f"[train_generator] the snapshots of epochs {missing} that {ckpt_dir / 'resume.pt'} keeps are gone; "
            "training from epoch 1")
        model, state = fresh_model(), None
    history, start = [], 1
    scores, kept = [], set()  # one row per scored snapshot; the epochs whose snapshots stay on disk
    if state is not None:
        eval_noise = state["eval_noise"]
        history, start = state["history"], state["epoch"] + 1
        scores, kept = state.get("scores", []), set(state.get("kept", []))
    elif main:
        # A fresh run: snapshots left by a run under other settings must not be scored, and their
        # run's state must not resume (were this run to die, those settings would come back to it).
        remove_resume_state(ckpt_dir / "resume.pt")
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
    score = None
    if make_scorer is not None and main and start <= cfg.epochs:
        # Building it may draw random numbers (a network's init): not from the resumed streams.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            score = make_scorer(device)

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
            previous = kept
            if epoch > cfg.save_from and (epoch - cfg.save_from) % cfg.save_every == 0:
                path = save_checkpoint(ckpt_dir, epoch, {**model.snapshot(), "family": cfg.family,
                                                         "eval_noise": eval_noise, "eval_labels": eval_labels})
                if score is not None:
                    scores.append({"epoch": epoch, **score(path)})
                    kept = kept_epochs(pd.DataFrame(scores))
                    log(f"[train_generator] epoch {epoch} scored: " + " ".join(
                        f"{k}={v:.4g}" for k, v in scores[-1].items() if k in ("fid", "kid", "fid_inception"))
                        + f"; snapshots kept: {sorted(kept)}")
            if score is not None:
                row["snapshots_on_disk"] = len(list_checkpoints(ckpt_dir))  # the most this epoch held
            save_resume_state(ckpt_dir / "resume.pt", {"key": run_key, "epoch": epoch, **model.state_dict(),
                                                       "rng": rng_state(), "eval_noise": eval_noise,
                                                       "history": history, "scores": scores, "kept": sorted(kept)})
            if score is not None:
                # The previous epoch's choices stay one epoch more: resume.prev.pt, the fallback of a
                # damaged resume.pt, may still name them.
                _remove_snapshots(ckpt_dir, keep=kept | previous)
        ddp.barrier()

    if main:
        if score is not None:
            _remove_snapshots(ckpt_dir, keep=kept)
            write_text(scores_path, pd.DataFrame(scores).to_csv(sep="\t", index=False, float_format="%.6f"))
        write_history(losses_path, history)
    ddp.barrier()
    return ckpt_dir


def _remove_snapshots(ckpt_dir: Path, keep: set[int]) -> None:
    for epoch, path in list_checkpoints(ckpt_dir):
        if epoch not in keep:
            path.unlink()


def train_generator(train, subset, losses_path, ckpt_dir, cfg: dict, *, vae=None, scoring: dict | None = None,
                    scores_path=None, threads: int = 1, gpus: int = 0) -> None:
    """train_gan on the real `subset` of the `train` store with the settings `cfg` (GANTrainConfig's
    fields), scoring its snapshots as they are written with the settings `scoring`
    (histosynth.evaluation.scoring.run_scorer) into `scores_path`: in this process, or given
    several GPUs as one torchrun process per GPU."""
    args = {"train": str(train), "subset": str(subset), "vae": str(vae) if vae else None,
            "losses": str(losses_path), "ckpt_dir": str(ckpt_dir), "cfg": dict(cfg), "threads": threads,
            "scoring": scoring, "scores": str(scores_path) if scores_path else None}
    if gpus > 1:
        # torchrun's ranks run train_generator_rank from this JSON (histosynth.generative.train_generator_ddp).
        ddp.launch("histosynth.generative.train_generator_ddp", args, gpus, Path(losses_path).parent / "train_generator_ddp.json")
    else:
        train_generator_rank(args)


def train_generator_rank(args: dict) -> None:
    """train_generator from plain arguments: in the job's process, or as one torchrun rank."""
    from histosynth.data.split import read_subset
    from histosynth.data.store import read_store
    from histosynth.evaluation.scoring import run_scorer, spec_key

    torch.set_num_threads(args["threads"])
    images, labels, class_names = read_store(args["train"], read_subset(args["subset"]))
    cfg = {**args["cfg"], "betas": tuple(args["cfg"]["betas"])}
    scorer = None
    if args.get("scoring"):
        def scorer(device):
            return run_scorer(args["scoring"], args["train"], args["subset"], str(device))
    train_gan(images, labels, len(class_names), args["ckpt_dir"], args["losses"], GANTrainConfig(**cfg),
              vae_path=args["vae"], scorer=scorer, scores_path=args.get("scores"),
              scoring_key=spec_key(args["scoring"]) if args.get("scoring") else "")
