"""Storage faults during a job (histosynth.job): a full disk or an unwritable output directory gives one
clear error, leaves nothing half-written and never touches finished results."""

import errno
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from histosynth.data.store import read_store, write_store
from histosynth.job import job

IMAGES = np.zeros((4, 8, 8, 3), np.uint8)
LABELS = np.array([0, 1, 0, 1])


def _smk(tmp_path, rule):
    return SimpleNamespace(rule=rule, log=[str(tmp_path / "logs" / f"{rule}.log")], resources={}, config={},
                           threads=1)


def _run_stage(tmp_path, monkeypatch, body):
    with pytest.raises(SystemExit) as exit_, job(_smk(tmp_path, "fake_stage")):
        body()
    assert exit_.value.code == 1
    return (tmp_path / "logs/fake_stage.log").read_text()


def test_a_full_disk_keeps_the_finished_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    pool = tmp_path / "pool.h5"
    write_store(pool, IMAGES + 7, LABELS, ["a", "b"])  # an earlier finished result
    before = pool.read_bytes()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(h5py.Group, "create_dataset", no_space)
    log = _run_stage(tmp_path, monkeypatch, lambda: write_store(pool, IMAGES, LABELS, ["a", "b"]))
    assert "histosynth fake_stage: error: cannot write" in log and "No space left on device" in log
    assert "Traceback" not in log and "run snakemake again" in log
    assert pool.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["logs", "pool.h5"]
    monkeypatch.undo()
    assert read_store(pool)[0].max() == 7


def test_an_unwritable_output_directory_is_named(tmp_path, monkeypatch):
    (tmp_path / "generators").write_text("a file where the output directory should be")
    out = tmp_path / "generators/histogan/subset0/pool.h5"
    log = _run_stage(tmp_path, monkeypatch, lambda: write_store(out, IMAGES, LABELS, ["a", "b"]))
    assert "cannot write" in log and "generators" in log and "Not a directory" in log


def test_other_os_errors_keep_their_traceback(tmp_path, monkeypatch):
    def missing():
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "input.h5")

    log = _run_stage(tmp_path, monkeypatch, missing)
    assert "Traceback" in log and "input.h5" in log
