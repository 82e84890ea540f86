"""Training checkpoints that survive kills: atomic files, newest-readable resume.

A checkpoint directory holds `epoch_00010.pt`, `epoch_00011.pt`, ... Each file is
written to a temporary name and renamed, so a kill never leaves a half file under
a checkpoint name; a file damaged later (disk fault, copy gone wrong) is detected
on load, reported with its path, and the previous one is used instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .fileio import atomic_path

PATTERN = re.compile(r"^epoch_(\d+)\.pt$")


def checkpoint_path(directory, epoch: int) -> Path:
    return Path(directory) / f"epoch_{epoch:05d}.pt"


def list_checkpoints(directory) -> list[tuple[int, Path]]:
    """(epoch, path) of every checkpoint file, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m[1]), p) for p in directory.iterdir() if (m := PATTERN.match(p.name))]
    return sorted(found)


def save_checkpoint(directory, epoch: int, state: dict) -> Path:
    path = checkpoint_path(directory, epoch)
    with atomic_path(path) as tmp:
        torch.save({"epoch": epoch, **state}, tmp)
    return path


def load_checkpoint(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def latest_checkpoint(directory) -> tuple[dict, Path] | None:
    """The newest checkpoint that loads, or None; unreadable ones are reported and skipped."""
    for epoch, path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(path), path
        except Exception as e:
            print(f"[checkpoint] {path} is unreadable ({type(e).__name__}: {e}); trying the previous one")
    return None


def rng_state() -> dict:
    """Every random stream a training step may touch (CPU and CUDA torch)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_resume_state(path, run_key: str, tag: str) -> dict | None:
    """The state saved at `path` if it belongs to this exact run (same `run_key`), else None.

    A job resumes only from its own settings and data; anything else (or an
    unreadable file) means training from epoch 1, said in the log under `tag`.
    """
    if not Path(path).is_file():
        return None
    try:
        state = load_checkpoint(path)
    except Exception as e:
        print(f"[{tag}] ignoring unreadable resume state {path} ({e}); training from epoch 1")
        return None
    if state.get("key") != run_key:
        print(f"[{tag}] resume state {path} is from other settings or data; training from epoch 1")
        return None
    return state
