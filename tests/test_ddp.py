"""Generator training over 2 processes: DistributedDataParallel on CPU with gloo (histosynth.generative.distributed).

Most tests fork their 2 workers (torch.multiprocessing, start_method="fork") and give each
the environment torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT):
forked workers skip re-importing torch, which costs several seconds per process on a
small machine. The last test goes through the stage and a real torchrun, end to end.
"""

import copy
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import histosynth.generative.distributed as ddp
import histosynth.generative.training as gt
from histosynth.config_schema import train_config
from histosynth.data.batches import BatchIterator
from histosynth.generative.families import family_module
from histosynth.generative.training import train_gan

HISTOGAN = {"g_channels": 8, "d_channels": 8, "d_max_mult": 2, "z_dim": 16, "g_up_blocks": 2,
            "g_res_blocks": 1, "mbd_kernels": 4, "mbd_kernel_dim": 2}
CGAN = {"latent_dim": 16, "filters": 8, "d_filters": 8}
VITGAN = {"z_dim": 16, "embed_dim": 256, "depth": 1, "num_heads": 2, "d_embed_dim": 32, "d_patch_size": 2}
MODELS = {"histogan": HISTOGAN, "cgan": CGAN, "vitgan": VITGAN}
TRAINERS = {family: family_module(family).Trainer for family in MODELS}


def data(n=16, size=32):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.tile([0, 1], n // 2)


def cfg(family, **kw):
    return train_config(**{"family": family, "model": MODELS[family], "epochs": 2, "batch_size": 8,
                           "save_from": 0, "save_every": 1, "n_eval_noise": 4, "device": "cpu", **kw})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, fn, args):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    fn(rank, *args)


def launch(fn, *args, world=2, timeout=120):
    """fn(rank, *args) in `world` forked processes; a worker's exception fails the test with its traceback."""
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("needs the fork start method")
    assert "WORLD_SIZE" not in os.environ and not dist.is_initialized()
    ctx = mp.start_processes(_rank_main, args=(world, _free_port(), fn, args), nprocs=world, join=False,
                             start_method="fork")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=0.2):  # raises ProcessRaisedException when a worker fails
        if time.monotonic() > deadline:  # a collective that never completes: fail, do not hang the suite
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{world} ranks still running after {timeout} s")


class Killed(Exception):
    pass


def _train(rank, out, family, epochs=2, kill_at=None):
    """Worker: train_gan as a rank; record which files it writes; save its final state."""
    made, writes = [], []
    module = family_module(family)
    trainer = module.Trainer
    module.Trainer = lambda *a, **k: made.append(trainer(*a, **k)) or made[-1]  # the trained model
    save_checkpoint, write_history, save_resume = gt.save_checkpoint, gt.write_history, gt.save_resume_state
    gt.save_checkpoint = lambda d, e, s: writes.append(f"epoch_{e:05d}.pt") or save_checkpoint(d, e, s)
    gt.write_history = lambda p, rows: writes.append(os.path.basename(p)) or write_history(p, rows)
    gt.save_resume_state = lambda p, s: writes.append(os.path.basename(p)) or save_resume(p, s)
    step, losses, rng = TRAINERS[family].step, [], []

    def recorded(self, *a, **k):  # this rank's own losses and random stream, step by step
        if len(losses) + 1 == kill_at:  # every rank dies at its kill_at-th step, as a killed job would
            raise Killed
        rng.append(torch.get_rng_state())
        losses.append({key: float(v) for key, v in step(self, *a, **k).items()})
        return losses[-1]

    TRAINERS[family].step = recorded
    x, y = data()
    try:
        train_gan(x, y, 2, f"{out}/ckpt", f"{out}/losses.tsv", cfg(family, epochs=epochs))
    except Killed:
        pass
    assert not dist.is_initialized()  # train_gan destroyed the process group it made
    torch.save({"state": made[-1].state_dict(), "writes": writes, "losses": losses, "rng": rng},
               f"{out}/rank{rank}.pt")


def _load(path):
    return torch.load(path, weights_only=True)


def _same(a, b, skip=lambda key: False, where=""):
    """Nested state dicts hold equal tensors (keys for which `skip` is true are left out)."""
    if torch.is_tensor(a):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            if not skip(str(k)):
                _same(a[k], b[k], skip, f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            _same(u, v, skip, f"{where}.{i}")
    else:
        assert a == b, where


@pytest.mark.parametrize("family", ["histogan", "vitgan"])
def test_two_ranks_train_identically_and_rank_0_alone_writes(tmp_path, capfd, family):
    launch(_train, str(tmp_path), family)
    r0, r1 = _load(tmp_path / "rank0.pt"), _load(tmp_path / "rank1.pt")
    # Rank 0 wrote each file once per epoch, rank 1 nothing; rank 0 alone logged.
    assert r0["writes"] == ["epoch_00001.pt", "resume.pt", "epoch_00002.pt", "resume.pt", "losses.tsv"]
    assert r1["writes"] == []
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "epoch_00001.pt", "epoch_00002.pt", "resume.prev.pt", "resume.pt"]
    out = capfd.readouterr().out
    assert out.count("[train_generator] epoch=1 ") == 1 and out.count("[train_generator] epoch=2 ") == 1
    assert "DistributedDataParallel over 2 processes" in out
    rows = [line.split("\t") for line in (tmp_path / "losses.tsv").read_text().splitlines()]
    assert [r[0] for r in rows] == ["epoch", "1", "2"] and all(np.isfinite(float(v)) for r in rows[1:] for v in r)
    # losses.tsv: each epoch's mean over both ranks' steps (n_syn, a count: summed over ranks).
    for col, name in enumerate(rows[0][1:-1], start=1):
        for epoch in (1, 2):
            steps = [s[name] for r in (r0, r1) for s in r["losses"][2 * epoch - 2:2 * epoch]]  # 2 steps/epoch
            expected = np.sum(steps) / 2 if name == "n_syn" else np.mean(steps)
            assert float(rows[epoch][col]) == pytest.approx(expected, rel=1e-5, abs=1e-6), (name, epoch)
    assert r0["losses"] != r1["losses"]  # the ranks saw different images and drew different noise ...
    assert not any(torch.equal(a, b) for a in r0["rng"] for b in r1["rng"])  # ... from their own streams
    # Same weights and optimiser states on both ranks. HistoGAN's generator batch norm keeps per-rank
    # running statistics on CPU: SyncBatchNorm (CUDA only) is what makes them global.
    skip = (lambda k: k.startswith("running_")) if family == "histogan" else (lambda k: False)
    _same(r0["state"], r1["state"], lambda k: skip(k.rsplit(".", 1)[-1]))
    snapshot = _load(tmp_path / "ckpt/epoch_00002.pt")
    _same(snapshot["G"], r0["state"]["G"])


def _step(rank, out, x, y, z, distribute):
    """Worker: one cGAN step on this rank's half of batch (x, y) with noise z, with or without DDP."""
    device = ddp.setup(torch.device("cpu"))
    torch.manual_seed(0)
    a = TRAINERS["cgan"]({**CGAN, "init_std": 0.2}, 2, 32, 2e-4, (0.5, 0.999))  # 0.02: vanishing G gradients
    if distribute:
        a.distribute(lambda module, **kw: ddp.wrap(module, device, **kw))
    batches = ddp.shard(BatchIterator(x, y, len(x), shuffle=False, augment=None, seed=0)) if distribute else None
    xs, ys = next(iter(batches)) if distribute else (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255,
                                                     torch.from_numpy(y))
    zs = z.tensor_split(2)[rank] if distribute else z
    torch.randn = lambda *shape, **kw: zs.clone()  # the step's only random draw: this rank's share of z
    a.step(xs * 2 - 1, ys, train_g=True)
    torch.save({"grad": {f"{n}.{k}": p.grad for n, m in (("G", a.G), ("D", a.D)) for k, p in m.named_parameters()},
                "state": a.state_dict()}, f"{out}/{'ddp' if distribute else 'local'}{rank}.pt")
    ddp.teardown()


def test_ddp_step_equals_one_full_batch_step(tmp_path):
    # cGAN: no batch statistics anywhere, so 2 ranks x half a batch must give exactly the full
    # batch's gradients (DDP averages), given the same noise per image.
    x, y = data(8)
    z = torch.randn(8, CGAN["latent_dim"], generator=torch.Generator().manual_seed(1))
    launch(_step, str(tmp_path), x, y, z, True)
    randn = torch.randn
    try:
        _step(0, str(tmp_path), x, y, z, False)  # one process, the whole batch
        _step(1, str(tmp_path), x[4:], y[4:], z[4:], False)  # a control: the second half alone
    finally:
        torch.randn = randn
    d0, d1 = _load(tmp_path / "ddp0.pt"), _load(tmp_path / "ddp1.pt")
    full, half = _load(tmp_path / "local0.pt"), _load(tmp_path / "local1.pt")
    _same(d0, d1)  # identical gradients, weights and Adam states on both ranks
    assert d0["grad"].keys() == full["grad"].keys() and all(g is not None for g in d0["grad"].values())
    for k, g in full["grad"].items():
        scale = g.abs().max()
        assert scale > 1e-3, k  # gradients that mean something
        torch.testing.assert_close(d0["grad"][k], g, rtol=1e-5, atol=1e-6 * scale, msg=k)
        # The check can fail: half a batch alone (no averaging) gives other weight gradients
        # (a bias's can nearly coincide: D.head.bias's is the batch mean of sigmoid - target).
        if k.endswith("weight"):
            assert (half["grad"][k] - g).abs().max() > 1e-2 * scale, k
    # And so the same weights after Adam's step, to lr / 20: Adam moves a weight by ~lr * g / (|g| + 1e-8),
    # so a gradient near 1e-8 that differs in its last bits (reduction order; seen on an Intel CPU: 5.29e-8
    # against 5.52e-8) moves it by ~1e-6 more; a DDP that did not average would differ by ~lr.
    for net in ("G", "D"):
        for k, v in full["state"][net].items():
            torch.testing.assert_close(d0["state"][net][k], v, rtol=0, atol=1e-5, msg=k)


def _critic_grads(rank, out, x, y):
    """Worker: with the gradient penalty's double backward, DDP's critic gradients are the mean of the
    ranks' own; every critic parameter (both ViT heads, the loss weights sigma) gets one."""
    device = ddp.setup(torch.device("cpu"))
    xs, ys = next(iter(ddp.shard(BatchIterator(x, y, len(x), shuffle=False, augment=None, seed=0))))
    for family in ("histogan", "vitgan"):
        torch.manual_seed(0)
        a = TRAINERS[family](MODELS[family], 2, 32, 2e-4, (0.5, 0.999))
        start = copy.deepcopy(a.state_dict())
        grads = []
        for distribute in (False, True):
            if distribute:
                a.load_state_dict(start)
                a.distribute(lambda module, **kw: ddp.wrap(module, device, **kw))
            torch.manual_seed(10 + rank)
            a.step(xs * 2 - 1, ys, train_g=False)
            grads.append({k: p.grad.clone() for k, p in a.D.named_parameters()})  # None: no gradient -> fails
        local, reduced = grads
        for k, g in local.items():
            other = g.clone()
            dist.all_reduce(other)
            torch.testing.assert_close(reduced[k], other / 2, rtol=1e-5, atol=1e-6, msg=f"{family} {k}")
        assert any(not torch.allclose(local[k], reduced[k]) for k in local)  # the ranks' halves differ
    torch.save(True, f"{out}/ok{rank}")
    ddp.teardown()


def test_gradient_penalty_critics_average_under_ddp(tmp_path):
    x, y = data(8)
    launch(_critic_grads, str(tmp_path), x, y)
    assert (tmp_path / "ok0").exists() and (tmp_path / "ok1").exists()


def test_two_rank_run_resumes_exactly_and_on_one_process(tmp_path, capfd):
    full, killed = tmp_path / "full", tmp_path / "killed"
    launch(_train, str(full), "cgan", 3)
    launch(_train, str(killed), "cgan", 3, 5)  # 2 steps per epoch: dies in epoch 3
    assert not (killed / "losses.tsv").exists()
    assert _load(killed / "ckpt/resume.pt")["epoch"] == 2
    shutil.copytree(killed, tmp_path / "again")
    capfd.readouterr()
    launch(_train, str(killed), "cgan", 3)
    assert capfd.readouterr().out.count("resuming after epoch 2") == 1
    _same(_load(full / "ckpt/epoch_00003.pt")["G"], _load(killed / "ckpt/epoch_00003.pt")["G"])
    _same(_load(full / "rank0.pt")["state"], _load(killed / "rank0.pt")["state"])
    drop_seconds = lambda p: [line.split("\t")[:-1] for line in p.read_text().splitlines()]  # noqa: E731
    assert drop_seconds(full / "losses.tsv") == drop_seconds(killed / "losses.tsv")
    # The same state resumes in a single process (a job given fewer GPUs): gpus is not a training setting.
    x, y = data()
    train_gan(x, y, 2, tmp_path / "again/ckpt", tmp_path / "again/losses.tsv", cfg("cgan", epochs=3))
    assert "resuming after epoch 2" in capfd.readouterr().out
    assert len((tmp_path / "again/losses.tsv").read_text().splitlines()) == 4


def test_batch_too_small_to_split(tmp_path):
    with pytest.raises(Exception, match="cannot be split across 2 processes"):
        launch(_train_small_batch, str(tmp_path))


def _train_small_batch(rank, out):
    x, y = data()
    train_gan(x, y, 2, f"{out}/ckpt", f"{out}/losses.tsv", cfg("cgan", batch_size=1))


def _train_generator(tmp_path, gpus, cfg_dict):
    """The train_generator job's one call, on a small store."""
    from histosynth.data.store import write_store
    from histosynth.generative.training import train_generator

    x, y = data()
    write_store(tmp_path / "train.h5", x, y, ["a", "b"])
    np.save(tmp_path / "subset.npy", np.arange(len(x)))
    train_generator(tmp_path / "train.h5", tmp_path / "subset.npy", tmp_path / "gen/losses.tsv",
                    tmp_path / "gen/checkpoints", cfg_dict, threads=2, gpus=gpus)


def test_stage_fails_with_torchrun_exit_status(tmp_path, capsys, monkeypatch):
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "ranks ran: $*"\nexit 3\n')
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))

    with pytest.raises(SystemExit) as e:
        _train_generator(tmp_path, 2, {"family": "cgan", "betas": [0.5, 0.999]})
    assert e.value.code == 3
    out = capsys.readouterr()
    args = str(tmp_path / "gen/train_generator_ddp.json")
    assert ("ranks ran: -m torch.distributed.run --standalone --nproc_per_node=2 -m histosynth.generative.train_generator_ddp "
            f"{args}") in out.out
    assert "torchrun exited with status 3" in out.err


def test_stage_trains_under_torchrun(tmp_path, capsys):
    def hung(*_):
        raise TimeoutError("torchrun still running after 300 s")  # the stage then terminates it

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(300)
    try:
        _train_generator(tmp_path, 2, asdict(cfg("histogan")))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    out = capsys.readouterr().out
    assert "--nproc_per_node=2" in out and "DistributedDataParallel over 2 processes" in out
    assert out.count("[train_generator] epoch=2 ") == 1  # rank 0's log only
    assert len((tmp_path / "gen/losses.tsv").read_text().splitlines()) == 3
    assert sorted(p.name for p in (tmp_path / "gen/checkpoints").iterdir()) == [
        "epoch_00001.pt", "epoch_00002.pt", "resume.prev.pt", "resume.pt"]
