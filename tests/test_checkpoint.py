"""Checkpoint files: atomic save, newest readable one wins, RNG round trip."""

import torch

from histosynth.checkpoint import checkpoint_path, latest_checkpoint, list_checkpoints, rng_state, save_checkpoint, set_rng_state


def test_latest_readable_checkpoint_is_used(tmp_path, capsys):
    assert latest_checkpoint(tmp_path / "none") is None
    for epoch in (1, 2, 10):
        save_checkpoint(tmp_path, epoch, {"w": torch.full((3,), float(epoch))})
    (tmp_path / "notes.txt").write_text("ignored")
    assert [e for e, _ in list_checkpoints(tmp_path)] == [1, 2, 10]
    state, path = latest_checkpoint(tmp_path)
    assert state["epoch"] == 10 and path == checkpoint_path(tmp_path, 10)
    # Truncate the newest: it is reported by path and epoch 2 is used.
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    state, path2 = latest_checkpoint(tmp_path)
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.full((3,), 2.0))
    assert str(path) in capsys.readouterr().out


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(0)
    state = rng_state()
    save_checkpoint(tmp_path, 1, {"rng": state})
    a = torch.rand(4)
    set_rng_state(latest_checkpoint(tmp_path)[0]["rng"])
    assert torch.equal(torch.rand(4), a)


def test_a_truncated_resume_state_falls_back_to_the_previous_one(tmp_path, capsys):
    from histosynth.checkpoint import load_resume_state, previous_state_path, remove_resume_state, save_resume_state

    path = tmp_path / "resume.pt"
    for epoch in (1, 2):
        save_resume_state(path, {"key": "run", "epoch": epoch})
    assert load_resume_state(path, "run", "t")["epoch"] == 2
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    state = load_resume_state(path, "run", "t")
    out = capsys.readouterr().out
    assert state["epoch"] == 1 and f"{path} is unreadable" in out and str(previous_state_path(path)) in out
    # A kill between the two renames of a save leaves only the previous state.
    path.unlink()
    assert load_resume_state(path, "run", "t")["epoch"] == 1
    # Both damaged: start afresh, said once more with the path.
    previous_state_path(path).write_bytes(b"not a checkpoint")
    assert load_resume_state(path, "run", "t") is None
    assert f"no readable resume state at {path}" in capsys.readouterr().out
    # Another run's state is never resumed, and finished jobs remove both files.
    save_resume_state(path, {"key": "other", "epoch": 5})
    assert load_resume_state(path, "run", "t") is None
    remove_resume_state(path)
    assert list(tmp_path.iterdir()) == []
