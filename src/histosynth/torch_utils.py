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


class FlopCount:
    """Counts the FLOPs of what runs inside it with torch.utils.flop_counter's formulas (matmuls,
    convolutions, attention; forward and backward), in `.total`.

    FlopCounterMode itself also attributes FLOPs to modules through backward hooks, which
    torch.autograd.grad (WGAN-GP's gradient penalty) does not support; the totals need none.
    """

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                formula = flop_registry.get(func._overloadpacket)
                if formula is not None:
                    counter.total += formula(*args, **kwargs, out_val=out)
                return out

        self.total, self._mode = 0, _Mode()

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)
