"""GAN training loop: snapshots, resume-after-kill equivalence, divergence stop."""

import dataclasses

import numpy as np
import pytest
import torch

import histosynth.generative.training as gt
from histosynth.checkpoint import list_checkpoints
from histosynth.config_schema import train_config
from histosynth.generative.families import family_module
from histosynth.generative.training import train_gan

TINY = {"g_channels": 8, "d_channels": 8, "d_max_mult": 2, "z_dim": 16, "g_up_blocks": 2,
        "g_res_blocks": 1, "mbd_kernels": 4, "mbd_kernel_dim": 2}


def data(n=16, size=32):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.tile([0, 1], n // 2)


def cfg(**kw):
    return train_config(**{"family": "histogan", "model": TINY, "epochs": 3, "batch_size": 8,
                           "save_from": 1, "save_every": 1, "n_eval_noise": 4, "device": "cpu", **kw})


CGAN_TINY = {"latent_dim": 16, "filters": 8, "d_filters": 8}
VITGAN_TINY = {"z_dim": 16, "embed_dim": 256, "depth": 1, "num_heads": 2, "d_embed_dim": 32, "d_patch_size": 2}


@pytest.mark.parametrize("family,model,adapter", [("histogan", TINY, family_module("histogan").Trainer),
                                                  ("cgan", CGAN_TINY, family_module("cgan").Trainer),
                                                  ("vitgan", VITGAN_TINY, family_module("vitgan").Trainer)])
def test_snapshots_losses_and_resume_equivalence(tmp_path, monkeypatch, family, model, adapter):
    x, y = data()
    c = cfg(family=family, model=model, ema_kimg=0.01)  # snapshots hold the generator average: it resumes too
    train_gan(x, y, 2, tmp_path / "full", tmp_path / "full.tsv", c)
    assert [e for e, _ in list_checkpoints(tmp_path / "full")] == [2, 3]
    losses = (tmp_path / "full.tsv").read_text().splitlines()
    assert losses[0].split("\t")[:3] == ["epoch", "d_loss", "g_loss"] and len(losses) == 4

    # Kill during epoch 3 (after epoch 2's state was saved), then run again.
    real_step, calls = adapter.step, []

    def dies_in_epoch_3(self, *a, **k):
        calls.append(1)
        if len(calls) == 5:  # 2 batches per epoch: the 5th step is epoch 3's first
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(adapter, "step", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train_gan(x, y, 2, tmp_path / "killed", tmp_path / "killed.tsv", c)
    assert not (tmp_path / "killed.tsv").exists()
    monkeypatch.setattr(adapter, "step", real_step)
    train_gan(x, y, 2, tmp_path / "killed", tmp_path / "killed.tsv", c)

    full = torch.load(tmp_path / "full/epoch_00003.pt", weights_only=True)
    resumed = torch.load(tmp_path / "killed/epoch_00003.pt", weights_only=True)
    for k, v in full["G"].items():
        assert torch.equal(v, resumed["G"][k]), k
    assert torch.equal(full["eval_noise"], resumed["eval_noise"])
    drop_seconds = lambda p: [line.split("\t")[:-1] for line in p.read_text().splitlines()]  # noqa: E731
    assert drop_seconds(tmp_path / "full.tsv") == drop_seconds(tmp_path / "killed.tsv")


def test_a_fresh_run_that_dies_leaves_nothing_the_old_settings_would_resume(tmp_path, monkeypatch, capsys):
    """Settings A finish; settings B start afresh (removing A's snapshots) and die; A again must
    train from epoch 1, not resume A's state beside snapshots that are gone or B's."""
    x, y = data()
    train_gan(x, y, 2, tmp_path / "ref", tmp_path / "ref.tsv", cfg())
    train_gan(x, y, 2, tmp_path / "c", tmp_path / "c.tsv", cfg())
    adapter = family_module("histogan").Trainer
    real_step = adapter.step
    monkeypatch.setattr(adapter, "step", lambda self, *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train_gan(x, y, 2, tmp_path / "c", tmp_path / "c.tsv", cfg(lr=1e-3))
    assert not list((tmp_path / "c").iterdir())  # neither A's snapshots nor its state
    monkeypatch.setattr(adapter, "step", real_step)
    capsys.readouterr()
    train_gan(x, y, 2, tmp_path / "c", tmp_path / "c.tsv", cfg())
    assert "resuming" not in capsys.readouterr().out
    for epoch in (2, 3):
        a, b = (torch.load(tmp_path / d / f"epoch_{epoch:05d}.pt", weights_only=True)["G"] for d in ("ref", "c"))
        assert all(torch.equal(v, b[k]) for k, v in a.items())


@pytest.mark.parametrize("family,model", [("histogan", TINY), ("cgan", CGAN_TINY), ("vitgan", VITGAN_TINY)])
def test_generator_average_half_life_and_snapshot(family, model):
    """G_ema moves toward G by 1 - 0.5 ** (batch / half-life), the half-life capped at 5 % of the
    images seen; snapshots hold the average, or the raw generator when ema_kimg is 0."""
    trainer = family_module(family).Trainer(model, 2, 32, 1e-4, (0.0, 0.9), None, ema_kimg=1.0)
    with torch.no_grad():
        for p in trainer.G.parameters():
            p.zero_()
        for p in trainer.G_ema.parameters():
            p.fill_(1.0)
    trainer.nimg = 10_000
    trainer.update_ema(100)  # half-life min(1000, 10 100 * 0.05 = 505) images
    expected = 0.5 ** (100 / 505)
    assert all(torch.allclose(p, torch.full_like(p, expected)) for p in trainer.G_ema.parameters())
    trainer.nimg = 1_000_000
    trainer.update_ema(100)  # past the ramp: half-life 1000 images
    expected *= 0.5 ** (100 / 1000)
    assert all(torch.allclose(p, torch.full_like(p, expected)) for p in trainer.G_ema.parameters())
    snap = trainer.snapshot()["G"]
    assert all(torch.equal(snap[k], v) for k, v in trainer.G_ema.state_dict().items())

    raw = family_module(family).Trainer(model, 2, 32, 1e-4, (0.0, 0.9), None)
    assert raw.G_ema is None
    assert all(torch.equal(raw.snapshot()["G"][k], v) for k, v in raw.G.state_dict().items())


def test_dihedral_trains_on_flipped_and_rotated_real_images(tmp_path, monkeypatch):
    """dihedral: every real batch image is one of the 8 flips/rotations of a training image, not
    always the identity; off, the images as they are."""
    x, y = data()
    adapter, real_step = family_module("cgan").Trainer, family_module("cgan").Trainer.step
    seen = []

    def record(self, xb, yb, train_g):
        seen.append(((xb + 1) / 2 * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
        return real_step(self, xb, yb, train_g)

    monkeypatch.setattr(adapter, "step", record)
    originals = {im.tobytes() for im in x}
    variants = {np.ascontiguousarray(np.rot90(f, k, axes=(0, 1))).tobytes(): k
                for im in x for f in (im, im[:, ::-1]) for k in range(4)}
    for dihedral in (False, True):
        seen.clear()
        train_gan(x, y, 2, tmp_path / str(dihedral), tmp_path / f"{dihedral}.tsv",
                  cfg(family="cgan", model=CGAN_TINY, epochs=2, dihedral=dihedral))
        images = [im.tobytes() for batch in seen for im in batch]
        assert len(images) == 4 * 8
        if dihedral:
            assert all(im in variants for im in images)
            assert sum(im not in originals for im in images) > len(images) / 2  # 7 of 8 transforms move pixels
        else:
            assert all(im in originals for im in images)


def test_changed_settings_do_not_resume(tmp_path, capsys):
    x, y = data()
    train_gan(x, y, 2, tmp_path / "c", tmp_path / "l.tsv", cfg(epochs=2))
    train_gan(x, y, 2, tmp_path / "c", tmp_path / "l.tsv", cfg(epochs=2, lr=2 * cfg().lr))
    assert "from other settings, code or data; training from epoch 1" in capsys.readouterr().out


def test_resume_state_of_another_architecture_restarts(tmp_path, capsys, monkeypatch):
    x, y = data()
    train_gan(x, y, 2, tmp_path / "c", tmp_path / "l.tsv", cfg(epochs=2))
    fresh = torch.load(tmp_path / "c/epoch_00002.pt", weights_only=True)["G"]
    # Same settings, but the code's model changed (here: a new default) since resume.pt was written.
    state = torch.load(tmp_path / "c/resume.pt", weights_only=True)
    state["G"] = {k + "_renamed": v for k, v in state["G"].items()}
    state["epoch"] = 1
    torch.save(state, tmp_path / "c/resume.pt")
    train_gan(x, y, 2, tmp_path / "c", tmp_path / "l.tsv", cfg(epochs=2))
    assert "does not fit this model" in capsys.readouterr().out
    again = torch.load(tmp_path / "c/epoch_00002.pt", weights_only=True)["G"]
    assert all(torch.equal(v, again[k]) for k, v in fresh.items())  # a clean restart, same as fresh


def test_divergence_names_the_epoch(tmp_path, monkeypatch):
    x, y = data()
    monkeypatch.setattr(family_module("histogan").Trainer, "step",
                        lambda self, x, y, train_g: {"d_loss": torch.tensor(float("nan"))})
    with pytest.raises(RuntimeError, match="diverged at epoch 1: d_loss"):
        train_gan(x, y, 2, tmp_path / "n", tmp_path / "n.tsv", cfg())


def test_bad_settings(tmp_path):
    x, y = data()
    with pytest.raises(ValueError, match="save_from"):
        train_gan(x, y, 2, tmp_path, tmp_path / "l.tsv", cfg(save_from=3))
    with pytest.raises(ValueError, match="family"):
        train_gan(x, y, 2, tmp_path, tmp_path / "l.tsv", dataclasses.replace(cfg(), family="stylegan"))


def test_cgan_trains_snapshots_and_generates(tmp_path):
    from histosynth.generative.generate import load_generator, sample_images

    x, y = data()
    c = cfg(family="cgan", model=CGAN_TINY, epochs=2, save_from=0)
    train_gan(x, y, 2, tmp_path / "a", tmp_path / "a.tsv", c)
    G = load_generator(tmp_path / "a/epoch_00002.pt")
    images = sample_images(G, np.array([0, 1]), np.array([1, 2]))
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8


def test_autocast_only_on_cuda():
    assert gt.amp_dtype(torch.device("cpu"), True) is None
    assert gt.amp_dtype(torch.device("cuda"), False) is None


@pytest.mark.parametrize("family,model", [("histogan", TINY), ("cgan", CGAN_TINY)])
def test_bfloat16_autocast_path_trains(tmp_path, monkeypatch, family, model):
    # The CUDA mixed-precision path, exercised with CPU autocast (same code, bf16 kernels on CPU).
    monkeypatch.setattr(gt, "amp_dtype", lambda device, enabled: torch.bfloat16)
    x, y = data()
    train_gan(x, y, 2, tmp_path / "c", tmp_path / "l.tsv", cfg(family=family, model=model, epochs=2, save_from=0))
    rows = [line.split("\t") for line in (tmp_path / "l.tsv").read_text().splitlines()[1:]]
    assert all(np.isfinite(float(v)) for r in rows for v in r[1:])
    snapshot = torch.load(tmp_path / "c/epoch_00002.pt", weights_only=True)
    assert all(v.dtype in (torch.float32, torch.int64) for v in snapshot["G"].values())  # master weights stay fp32


def test_gradient_penalty_is_float32_inside_autocast():
    from histosynth.generative.models import histogan

    torch.manual_seed(0)
    critic = histogan.Discriminator(16, histogan.HistoGANConfig(image_size=16, **TINY)).eval()  # eval: no SN update
    real, fake, y = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 0, 1])
    torch.manual_seed(1)
    plain = histogan.gradient_penalty(critic, real, fake, y)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = histogan.gradient_penalty(critic, real, fake, y)
        assert critic(real, y).dtype == torch.bfloat16  # autocast is really on around it
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)
