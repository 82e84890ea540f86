import numpy as np
import pytest
import torch

from histosynth.data.augment import AugmentConfig
from histosynth.data.batches import BatchIterator

N, SIZE = 10, 8


def dataset(n=N):
    """Image i is filled with value i (plus a position ramp), label i: content identifies the row."""
    ramp = np.arange(SIZE * SIZE * 3, dtype=np.uint8).reshape(SIZE, SIZE, 3) % 50
    images = (np.arange(n, dtype=np.uint8)[:, None, None, None] * 20 + ramp).astype(np.uint8)
    return images, np.arange(n)


def stream(batches, epochs=1):
    return [(x.clone(), y.clone()) for _ in range(epochs) for x, y in batches]


@pytest.mark.parametrize("drop_last, sizes", [(False, [4, 4, 2]), (True, [4, 4])])
def test_batch_shapes_dtypes_and_count(drop_last, sizes):
    batches = BatchIterator(*dataset(), 4, shuffle=True, augment=AugmentConfig(), seed=0, drop_last=drop_last)
    out = stream(batches)
    assert len(batches) == len(out) == len(sizes)
    for (x, y), b in zip(out, sizes):
        assert x.shape == (b, 3, SIZE, SIZE) and x.dtype == torch.float32
        assert y.shape == (b,) and y.dtype == torch.int64
        assert x.min() >= 0 and x.max() <= 1


def test_each_epoch_is_a_permutation_with_matching_pixels():
    images, labels = dataset()
    batches = BatchIterator(images, labels, 3, shuffle=True, augment=None, seed=1)
    orders = []
    for _ in range(3):
        xs, ys = zip(*stream(batches))
        x, y = torch.cat(xs), torch.cat(ys)
        assert sorted(y.tolist()) == list(range(N))
        # Unaugmented pixels are exactly the stored image of that label, in NCHW.
        expected = torch.from_numpy(images[y.numpy()]).permute(0, 3, 1, 2).float() / 255
        assert torch.equal(x, expected)
        orders.append(y.tolist())
    assert orders[0] != orders[1] != orders[2]  # a new permutation every epoch


def test_same_seed_same_stream_other_seed_differs():
    def make(seed):
        return BatchIterator(*dataset(), 4, shuffle=True, augment=AugmentConfig(), seed=seed)
    a, b, c = stream(make(5), 2), stream(make(5), 2), stream(make(6), 2)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_set_epoch_reproduces_an_epoch():
    full = BatchIterator(*dataset(), 4, shuffle=True, augment=AugmentConfig(), seed=3)
    epochs = [stream(full) for _ in range(3)]
    resumed = BatchIterator(*dataset(), 4, shuffle=True, augment=AugmentConfig(), seed=3)
    resumed.set_epoch(2)
    again = stream(resumed)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(epochs[2], again))


def test_abandoned_pass_still_advances_the_epoch():
    batches = BatchIterator(*dataset(), 4, shuffle=True, augment=None, seed=0)
    next(iter(batches))
    assert batches.epoch == 1


def test_no_shuffle_keeps_order():
    images, labels = dataset()
    batches = BatchIterator(images, labels, 4, shuffle=False, augment=None, seed=0)
    for _ in range(2):
        xs, ys = zip(*stream(batches))
        assert torch.cat(ys).tolist() == list(range(N))
        assert torch.equal(torch.cat(xs), torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)


def test_channels_last_output():
    batches = BatchIterator(*dataset(), 4, shuffle=True, augment=AugmentConfig(), seed=0, channels_last=True)
    x, _ = next(iter(batches))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_rejects_bad_inputs():
    images, labels = dataset()
    with pytest.raises(ValueError, match="labels"):
        BatchIterator(images, labels[:-1], 4, shuffle=True, augment=None, seed=0)
    with pytest.raises(ValueError, match="uint8"):
        BatchIterator(images.astype(np.float32), labels, 4, shuffle=True, augment=None, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        BatchIterator(images, labels, 0, shuffle=True, augment=None, seed=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_stream_matches_cpu():
    cpu = stream(BatchIterator(*dataset(), 4, shuffle=True, augment=AugmentConfig(), seed=2))
    gpu = stream(BatchIterator(*dataset(), 4, shuffle=True, augment=AugmentConfig(), seed=2, device="cuda"))
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.device.type == "cuda" and torch.equal(yg.cpu(), yc)
        torch.testing.assert_close(xg.cpu(), xc, atol=1e-5, rtol=0)
