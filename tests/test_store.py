"""The canonical HDF5 store: round trip, indexed reads, clear errors."""

import os

import h5py
import numpy as np
import pytest

from histosynth.data import store
from histosynth.data.store import read_store, store_info, write_store
from histosynth.errors import InputError


def make(tmp_path, n=50):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 12, 12, 3), dtype=np.uint8)
    y = rng.integers(0, 3, n)
    write_store(tmp_path / "s.h5", x, y, ["a", "b", "c"], {"source": "test"})
    return x, y


def test_round_trip_and_info(tmp_path):
    x, y = make(tmp_path)
    gx, gy, names = read_store(tmp_path / "s.h5")
    assert np.array_equal(gx, x) and np.array_equal(gy, y) and names == ["a", "b", "c"]
    info = store_info(tmp_path / "s.h5")
    assert info.n == 50 and info.image_shape == (12, 12, 3) and info.provenance == {"source": "test"}


def test_indexed_read_keeps_requested_order_across_windows(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "READ_BLOCK", 7)  # force many windows
    x, y = make(tmp_path)
    idx = np.array([49, 3, 17, 18, 0, 33, 8])
    gx, gy, _ = read_store(tmp_path / "s.h5", idx)
    assert np.array_equal(gx, x[idx]) and np.array_equal(gy, y[idx])
    with pytest.raises(InputError, match="outside"):
        read_store(tmp_path / "s.h5", [50])


def test_bad_files_raise_clear_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_store(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"\x89HDF\r\n" + b"0" * 100)
    with pytest.raises(InputError, match="junk.h5"):
        read_store(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "mismatch.h5", "w") as f:
        f["images"] = np.zeros((4, 8, 8, 3), np.uint8)
        f["labels"] = np.zeros(3, np.int64)
        f.attrs["class_names"] = '["a"]'
    with pytest.raises(InputError, match="4 rows but 'labels'"):
        read_store(tmp_path / "mismatch.h5")
    with pytest.raises(InputError, match=r"uint8 \(N, H, W, 3\)"):
        write_store(tmp_path / "x.h5", np.zeros((2, 8, 8), np.uint8), np.zeros(2), ["a"])
    assert not (tmp_path / "x.h5").exists()


def test_failed_write_keeps_previous_file(tmp_path):
    x, y = make(tmp_path)
    with pytest.raises(InputError):
        write_store(tmp_path / "s.h5", x, y + 5, ["a", "b", "c"])
    gx, _, _ = read_store(tmp_path / "s.h5")
    assert np.array_equal(gx, x)
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5"]  # no temp files left


def test_outputs_follow_the_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        make(tmp_path)
    finally:
        os.umask(old)
    assert (tmp_path / "s.h5").stat().st_mode & 0o777 == 0o644
