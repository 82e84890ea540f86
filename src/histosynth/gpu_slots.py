"""Give concurrent GPU jobs different GPUs, with one advisory lock file per GPU.

Snakemake counts the `gpu` resource (`--resources gpu=2` runs at most two GPU
jobs at once) but never says *which* GPU a job gets, so every job starts on
GPU 0. `gpu_slots(n)` picks n GPUs that no other job holds, exports
CUDA_VISIBLE_DEVICES and keeps them until the `with` block ends:

    with gpu_slots(1) as ids:   # e.g. ["1"]; [] on a machine without GPUs
        train()                 # CUDA now sees only GPU 1, as cuda:0

How:
- GPUs are found without initialising CUDA in this process (nvidia-smi, else
  /proc/driver/nvidia/gpus): CUDA reads CUDA_VISIBLE_DEVICES once, when it
  initialises, so the variable must be set before anything touches torch.cuda.
- One lock file per GPU, <lock dir>/gpu-<id>.lock, taken with fcntl.flock
  (exclusive, non-blocking, each GPU tried in turn). The kernel drops a flock when
  the last descriptor on it closes, so a job that dies in any way, SIGKILL
  included, frees its GPU: there are no stale locks to clean up. (Children forked
  by the job inherit the descriptor and hold the GPU until they exit too.) The
  locks are advisory: they only coordinate processes that use this module.
- When every GPU is held it prints "waiting for a free GPU" and retries every
  `poll` seconds. It never keeps some GPUs while waiting for more, so two jobs
  that each want two GPUs cannot deadlock.
- Lock dir: $HISTOSYNTH_GPU_LOCK_DIR, else <tmp>/histosynth-gpu-locks-<uid>.
  Per user: jobs of different users do not see each other's locks (point
  HISTOSYNTH_GPU_LOCK_DIR at one shared, group-writable folder to change that).
  `lsof <lock dir>/*` shows which process holds which GPU.

Schedulers:
- CUDA_VISIBLE_DEVICES already set (by a scheduler, or by you): only those GPUs
  are candidates, and the chosen subset of them is exported.
- SLURM (SLURM_JOB_ID and CUDA_VISIBLE_DEVICES both set): SLURM has already
  given this job its GPUs, and with cgroup isolation every job sees its own GPUs
  renumbered from 0, so "GPU 0" of two jobs may be two different cards; locking
  by those numbers would make unrelated jobs wait for each other. So nothing is
  locked and CUDA_VISIBLE_DEVICES is left as SLURM set it. Consequence: several
  GPU jobs run concurrently inside ONE SLURM allocation (e.g. snakemake inside
  salloc) share its GPUs; give each GPU job its own SLURM job instead
  (Snakemake's slurm executor does).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence

from histosynth.errors import InputError

LOCK_DIR_ENV = "HISTOSYNTH_GPU_LOCK_DIR"
PROC_GPUS = "/proc/driver/nvidia/gpus"  # one folder per GPU, named by PCI bus id


def machine_gpus() -> list[str]:
    """Ids ("0", "1", ...) of this machine's NVIDIA GPUs, [] if none; never initialises CUDA.

    Only the count matters: CUDA_VISIBLE_DEVICES=k names the k-th GPU in CUDA's
    own order (which may differ from nvidia-smi's), and every job uses the same
    numbering, so distinct ids are distinct cards.
    """
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=60, check=True).stdout
            return [line.strip() for line in out.splitlines() if line.strip().isdigit()]
        except (OSError, subprocess.SubprocessError):
            pass  # no driver loaded, no device ("No devices were found" exits 6), or a hang
    try:
        return [str(i) for i in range(len(os.listdir(PROC_GPUS)))]
    except OSError:
        return []


def visible_ids(value: str) -> list[str]:
    """Parse CUDA_VISIBLE_DEVICES as CUDA does: comma-separated ids; an empty or
    negative entry (the usual "-1" that hides all GPUs) ends the list."""
    ids = []
    for part in value.split(","):
        part = part.strip()
        if not part or part.startswith("-"):
            break
        ids.append(part)
    return ids


def default_lock_dir() -> str:
    return os.environ.get(LOCK_DIR_ENV) or os.path.join(tempfile.gettempdir(),
                                                        f"histosynth-gpu-locks-{os.getuid()}")


def _try_lock(path: str) -> int | None:
    """An open descriptor holding an exclusive flock on `path`, or None if another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise


def _release(fds: dict[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)  # closing the last descriptor drops the flock
    fds.clear()


@contextlib.contextmanager
def gpu_slots(n: int = 1, lock_dir: str | None = None, devices: Sequence | None = None,
              poll: float = 1.0, timeout: float | None = None) -> Iterator[list[str]]:
    """Hold n GPUs of this machine for the `with` block; yields their ids.

    devices: the machine's GPU ids (default: machine_gpus()); tests pass fakes.
    timeout: give up with TimeoutError after this many seconds (default: wait forever).
    Yields [] and changes nothing when there is no GPU (or CUDA_VISIBLE_DEVICES
    hides them all). Inside the block CUDA_VISIBLE_DEVICES is the chosen ids,
    comma-separated; its previous value is restored afterwards.
    """
    found = [] if n < 1 else machine_gpus() if devices is None else [str(d) for d in devices]
    preset = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not found:
        yield []  # nothing asked for, or a CPU-only machine
        return
    if preset is not None and os.environ.get("SLURM_JOB_ID"):
        yield visible_ids(preset)  # SLURM chose already: see the module docstring
        return
    candidates = visible_ids(preset) if preset is not None else found
    if not candidates:
        yield []  # CUDA_VISIBLE_DEVICES hides every GPU
        return
    if n > len(candidates):
        raise InputError(f"{n} GPUs requested but only {len(candidates)} usable: {','.join(candidates)}")

    lock_dir = lock_dir or default_lock_dir()
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    fds: dict[str, int] = {}
    start = time.monotonic()
    waiting = False
    try:
        while True:
            for dev in candidates:
                fd = _try_lock(os.path.join(lock_dir, "gpu-" + re.sub(r"[^\w.-]", "_", dev) + ".lock"))
                if fd is not None:
                    fds[dev] = fd
                    if len(fds) == n:
                        break
            if len(fds) == n:
                break
            _release(fds)  # never sit on some GPUs while waiting for more
            if timeout is not None and time.monotonic() - start >= timeout:
                raise TimeoutError(f"no {n} free GPU(s) among {','.join(candidates)} within {timeout} s")
            if not waiting:
                print(f"[gpu] waiting for a free GPU: {','.join(candidates)} all held "
                      f"(lock files in {lock_dir})", flush=True)
                waiting = True
            time.sleep(poll)
    except BaseException:
        _release(fds)
        raise
    if waiting:
        print(f"[gpu] got GPU {','.join(fds)} after {time.monotonic() - start:.0f} s", flush=True)

    chosen = list(fds)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(chosen)
    try:
        yield chosen
    finally:
        if preset is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = preset
        _release(fds)
