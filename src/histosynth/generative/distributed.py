"""One generator training run over several processes (DistributedDataParallel, torchrun).

`torchrun --nproc_per_node=N` starts N copies of the training process with RANK,
LOCAL_RANK and WORLD_SIZE in their environment (stages.train_generator launches
histosynth.generative.train_generator_ddp that way for a job with several GPUs). With
WORLD_SIZE unset or 1 every helper here does nothing, so single-process training
stays exactly what it was. What histosynth.generative.training does with them:

- process group: nccl with one GPU per rank (cuda:LOCAL_RANK), gloo on CPU;
  destroyed when training ends.
- batch: `batch_size` stays the GLOBAL batch. Every rank takes its contiguous
  share of each batch that the single-process BatchIterator draws (same (seed,
  epoch) order), so an optimiser step sees the same images on N GPUs as on one,
  and DDP's mean of the ranks' gradients is the full-batch gradient (exactly, when
  the shares are equal and the networks have no batch statistics).
- noise: each rank reseeds torch from (seed, epoch, rank) when an epoch starts,
  so ranks draw different z / diffusion noise and a resumed run replays epoch e.
- logged losses: the per-epoch sums are all-reduced, so losses.tsv holds the
  mean over ranks (counts such as n_syn: the sum, i.e. per global batch).
- files: rank 0 alone prints, shows progress bars and writes snapshots,
  resume.pt and losses.tsv; the others wait at a barrier. Every rank reads the
  same resume.pt, so a run resumes on any number of GPUs.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from histosynth.errors import InputError

_started = False  # this module initialised the process group (and so destroys it)


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0, or the only process: the one that logs and writes files."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); this rank's device.

    CUDA: rank r of a node trains on cuda:LOCAL_RANK (of the GPUs in CUDA_VISIBLE_DEVICES) with nccl.
    """
    global _started
    if world_size() <= 1:
        return device
    if device.type == "cuda":
        local, visible = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= visible:
            raise InputError(f"rank {rank()} wants cuda:{local}, but only {visible} CUDA device(s) are visible: "
                             "start no more processes per node than there are GPUs")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        cuda = device.type == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
        _started = True
    return device


def teardown() -> None:
    """Destroy the process group if setup() made it."""
    global _started
    if _started and dist.is_initialized():
        dist.destroy_process_group()
    _started = False


def barrier() -> None:
    if world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def check_agree(value, what: str) -> None:
    """Raise on every rank if the ranks hold different `value`s (e.g. they read different resume states)."""
    if world_size() <= 1:
        return
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise RuntimeError(f"ranks disagree on {what}: {values}")


def wrap(module: nn.Module, device: torch.device, *, sync_bn: bool = True) -> nn.Module:
    """`module` in DistributedDataParallel, its BatchNorm layers made SyncBatchNorm on CUDA if `sync_bn`.

    The conversion swaps layers inside `module` (never its root here) and keeps their
    parameters and buffers, so optimisers and state_dict keys stay valid. Every
    parameter must get a gradient in each backward through the wrapper (no
    find_unused_parameters: it would cost a graph walk per step and nothing here needs it).
    """
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn and device.type == "cuda":
        if nn.SyncBatchNorm.convert_sync_batchnorm(module) is not module:
            raise ValueError("wrap() cannot convert a bare BatchNorm layer in place")
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


class Shards:
    """This rank's contiguous share of every batch of a BatchIterator (what DistributedSampler does for a
    DataLoader): same order and batch count on every rank, `batch_size` the global batch. Each rank
    holds all images (BatchIterator's copy on its device), gathers the whole batch and keeps its slice:
    one global batch of float images (50 MB at 256 x 128 px) next to the model, for no extra code."""

    def __init__(self, batches, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __iter__(self):
        for x, y in self.batches:
            yield x.tensor_split(self.world)[self.rank], y.tensor_split(self.world)[self.rank]


def shard(batches):
    """`batches` split across the ranks (unchanged in a single process)."""
    w = world_size()
    if w <= 1:
        return batches
    n, b = len(batches.labels), batches.batch_size
    smallest = min(b, n - (len(batches) - 1) * b)  # the last batch may be partial
    if smallest < w:
        raise InputError(f"a batch of {smallest} images cannot be split across {w} processes: "
                         f"batch_size is the global batch, so it must be at least the number of GPUs")
    if b % w and is_main():
        print(f"[train_generator] batch_size {b} is not a multiple of {w} processes: ranks get "
              f"{-(-b // w)} or {b // w} images per step (each rank's mean counts equally)")
    return Shards(batches, rank(), w)


def seed_epoch(seed: int, epoch: int) -> None:
    """Several processes only: torch's random stream for this epoch from (seed, epoch, rank)."""
    if world_size() > 1:
        torch.manual_seed(int(np.random.SeedSequence([seed, epoch, rank()]).generate_state(1, np.uint64)[0]))


def reduce_logged(sums: dict, device: torch.device, summed=()) -> dict:
    """Per-epoch sums of the logged values, averaged over the ranks (keys in `summed`: added up)."""
    w = world_size()
    if w <= 1:
        return sums
    keys = list(sums)  # same keys in the same order on every rank: the same steps ran everywhere
    t = torch.stack([torch.as_tensor(sums[k], device=device).to(torch.float64) for k in keys])
    dist.all_reduce(t)
    return {k: t[i] if k in summed else t[i] / w for i, k in enumerate(keys)}


def launch(module: str, args: dict, nproc: int, args_path) -> None:
    """`torchrun --standalone --nproc_per_node=N -m MODULE ARGS.json`, its output streamed to this
    process's; a failure ends the job with torchrun's exit status. The job's CPU threads
    (`args["threads"]`) are shared by its ranks."""
    import subprocess
    import sys
    from pathlib import Path

    from histosynth.fileio import write_json

    threads = max(1, args["threads"] // nproc)
    write_json(args_path, {**args, "threads": threads})
    # `python -m torch.distributed.run` is torchrun, from this very interpreter and environment.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", module, str(args_path)]
    src = str(Path(__file__).resolve().parents[2])  # the ranks run this same code, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p),
           "OMP_NUM_THREADS": str(threads)}
    print(f"[{module}] {nproc} GPUs: {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        for line in proc.stdout:  # bytes, split at \n only: progress bars' \r stay as in-process
            sys.stdout.write(line.decode(errors="replace"))
            sys.stdout.flush()
        rc = proc.wait()
    finally:
        if proc.poll() is None:  # the job was interrupted: take the ranks down with it
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if rc != 0:
        print(f"histosynth {module}: error: torchrun exited with status {rc}", file=sys.stderr, flush=True)
        raise SystemExit(rc if rc > 0 else 128 - rc)  # killed by signal N: 128 + N, as a shell reports it
