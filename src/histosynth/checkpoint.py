"""Training checkpoints that survive kills: atomic files, newest-readable resume.

A checkpoint directory holds `epoch_00010.pt`, `epoch_00011.pt`, ... Each file is
written to a temporary name and renamed, so a kill never leaves a half file under
a checkpoint name; a file damaged later (disk fault, copy gone wrong) is detected
on load, reported with its path, and the previous one is used instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from histosynth.fileio import atomic_path

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
        # Saved with as many GPUs as were visible (a multi-GPU job's rank 0 sees them all): set those there are.
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])


def previous_state_path(path) -> Path:
    """Where `save_resume_state` keeps the state it replaced: resume.pt -> resume.prev.pt."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_resume_state(path, state: dict) -> None:
    """Write `state` atomically, keeping the state it replaces beside it.

    A resume file damaged later (disk fault, truncated copy) then costs one epoch,
    not the run. A kill between the two renames leaves only the previous state,
    which `load_resume_state` falls back to.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        if path.exists():
            os.replace(path, previous_state_path(path))


def remove_resume_state(path) -> None:
    for p in (Path(path), previous_state_path(path)):
        p.unlink(missing_ok=True)


def load_resume_state(path, run_key: str, tag: str) -> dict | None:
    """The newest readable state saved at `path` (else the previous one) if it belongs
    to this exact run (same `run_key`), else None.

    A job resumes only from its own settings and data; anything else (or no readable
    state) means training from epoch 1. Each decision is said in the log under `tag`,
    with the file's path.
    """
    for candidate in (Path(path), previous_state_path(path)):
        if not candidate.is_file():
            continue
        try:
            state = load_checkpoint(candidate)
        except Exception as e:
            print(f"[{tag}] resume state {candidate} is unreadable ({type(e).__name__}: {e}); "
                  "trying the previous one")
            continue
        if state.get("key") != run_key:
            print(f"[{tag}] resume state {candidate} is from other settings, code or data; training from epoch 1")
            return None
        if candidate != Path(path):
            print(f"[{tag}] resuming from the previous state {candidate} (epoch {state.get('epoch')})")
        return state
    if previous_state_path(path).is_file() or Path(path).is_file():
        print(f"[{tag}] no readable resume state at {path}; training from epoch 1")
    return None


def selected_snapshot(choice_path) -> tuple[int, Path]:
    """(epoch, snapshot path) of the checkpoint a `selected.json` (rule select_checkpoint) names."""
    import json

    with open(choice_path) as f:
        epoch = json.load(f)["epoch"]
    return epoch, checkpoint_path(Path(choice_path).parent / "checkpoints", epoch)


def resume_or_start(path, run_key: str, tag: str, objects, *, restore, fresh, log=print):
    """(objects, state): the freshly built training `objects` (models, optimisers) with this run's
    saved state at `path` put back by `restore(objects, state)`, and the RNG streams it saved; or,
    when there is none to resume (no `path`, another run's state, or one that does not fit this
    code's models), state None with `objects` as built (`fresh()`: rebuilt after a failed restore)."""
    state = load_resume_state(path, run_key, tag) if path else None
    if state is None:
        return objects, None
    try:
        restore(objects, state)
    except (RuntimeError, ValueError, KeyError) as e:
        # Same settings, different code (the model changed since the state was saved).
        log(f"[{tag}] resume state does not fit this model ({str(e)[:200]}); training from epoch 1")
        return fresh(), None
    if "rng" in state:
        set_rng_state(state["rng"])
    log(f"[{tag}] resuming after epoch {state['epoch']} from {path}")
    return objects, state
