"""In-memory minibatches: the whole split as one uint8 tensor on the training device.

A training subset fits in memory (PCam 10% is ~0.7 GB as uint8), so there is no
Dataset/DataLoader: batches are gathered from one NCHW uint8 tensor, converted
to float only when yielded and augmented as whole batches (augment.py). On CUDA
the images live on the GPU and nothing crosses the bus per batch but a few
random numbers.

Every pass (epoch) draws its permutation and augmentation from a CPU generator
seeded by (seed, epoch), so equal seeds give equal streams on any device, and a
resumed run reproduces epoch e with set_epoch(e).
"""

from __future__ import annotations

import numpy as np
import torch

from histosynth.data.augment import AugmentConfig, augment_batch


def epoch_seed(seed: int, epoch: int) -> int:
    """Independent, well-mixed generator seed per (run seed, epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


class BatchIterator:
    """Yields (x float32 (B, 3, H, W) in [0, 1], y int64 (B,)) on `device`; epochs count from 0."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, *,
                 shuffle: bool, augment: AugmentConfig | None, seed: int,
                 device: torch.device | str = "cpu", drop_last: bool = False,
                 channels_last: bool = False):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if labels.shape != (len(images),):
            raise ValueError(f"{len(images)} images but labels of shape {labels.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.device = torch.device(device)
        # Copy to the device first, then transpose there (on a GPU the NHWC -> NCHW
        # copy is free next to the transfer).
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        self.images = self.images.permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(self.device)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.seed, self.drop_last, self.channels_last = seed, drop_last, channels_last
        self.epoch = 0

    def __len__(self) -> int:
        n, b = len(self.labels), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        """The next pass yields epoch `epoch` (then epoch + 1, ...)."""
        self.epoch = epoch

    def __iter__(self):
        # The epoch advances when a pass starts, not when it finishes, so an
        # abandoned pass (break) does not replay its draws next time.
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self._batches(torch.Generator().manual_seed(epoch_seed(self.seed, epoch)))

    def _batches(self, generator: torch.Generator):
        n, b = len(self.labels), self.batch_size
        order = torch.randperm(n, generator=generator).to(self.device) if self.shuffle else None
        for start in range(0, len(self) * b, b):
            if order is None:
                x, y = self.images[start:start + b], self.labels[start:start + b]
            else:
                rows = order[start:start + b]
                x, y = self.images[rows], self.labels[rows]
            x = x.float().div_(255)
            if self.augment is not None:
                x = augment_batch(x, self.augment, generator)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y
