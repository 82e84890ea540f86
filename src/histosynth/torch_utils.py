"""Device and precision helpers shared by the trainers and the sampling stages."""

from __future__ import annotations

import torch

from histosynth.errors import InputError


def pick_device(name: str) -> torch.device:
    """Trainers: auto = CUDA when present, else CPU; an explicit 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device is 'cuda' but no CUDA device is visible")
    return torch.device(name)


def sampling_device(setting: str) -> str:
    """Sampling and scoring stages: CUDA when present, unless the config pins the CPU. A GPU job
    found no GPU only under `allow_cpu` (histosynth.job), so 'cuda' falls back to the CPU here."""
    return "cuda" if setting != "cpu" and torch.cuda.is_available() else "cpu"


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype for this device, or None for full float32."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None
