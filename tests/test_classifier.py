"""Classifier stage on a micro dataset: it learns, selects on validation, writes results."""

import json

import numpy as np
import pytest
import torch

from histosynth.classification.classifier import ClassifierConfig, build_classifier, train_classifier
from histosynth.data.store import write_store
from histosynth.errors import InputError


def separable_stores(tmp_path, n=64, size=32):
    """Two classes a linear probe could separate: red-ish vs blue-ish noise."""
    rng = np.random.default_rng(0)
    paths = {}
    for split, count in (("train", n), ("valid", 32), ("test", 32)):
        y = np.tile([0, 1], count // 2)
        x = rng.integers(0, 100, (count, size, size, 3))
        x[y == 1, :, :, 0] += 120
        x[y == 0, :, :, 2] += 120
        paths[split] = tmp_path / f"{split}.h5"
        write_store(paths[split], x.astype(np.uint8), y, ["normal", "tumor"])
    subset = tmp_path / "subset0.npy"
    np.save(subset, np.arange(n))
    return paths, subset


def run(tmp_path, strategy="traditional", **cfg):
    paths, subset = separable_stores(tmp_path)
    out = {k: tmp_path / f"{strategy}.{k}" for k in ("metrics", "history", "model")}
    cfg = ClassifierConfig(**{"epochs": 3, "batch_size": 16, "lr": 0.01, "eval_batch_size": 32,
                              "device": "cpu", **cfg})
    result = train_classifier(paths["train"], subset, paths["valid"], paths["test"],
                              metrics_path=out["metrics"], history_path=out["history"],
                              model_path=out["model"], strategy=strategy, seed=0, cfg=cfg)
    return result, out


def test_learns_a_separable_task_and_writes_outputs(tmp_path):
    result, out = run(tmp_path)
    assert result["test"]["auc"] > 0.9
    saved = json.loads(out["metrics"].read_text())
    assert saved["test"] == result["test"] and 1 <= saved["best_epoch"] <= 3
    history = out["history"].read_text().splitlines()
    assert history[0].startswith("epoch\ttrain_loss\tval_accuracy") and len(history) == 4
    # The saved weights are the selected epoch's and load without pickle.
    state = torch.load(out["model"], weights_only=True)
    model = build_classifier("resnet18", 2)
    model.load_state_dict(state)


def test_same_seed_same_result(tmp_path):
    a, _ = run(tmp_path / "a", strategy="baseline", epochs=1)
    b, _ = run(tmp_path / "b", strategy="baseline", epochs=1)
    assert a["test"] == b["test"]


def test_imagenet_weights_are_loaded_from_a_configured_path(tmp_path, capsys):
    net = build_classifier("resnet18", 2).backbone
    reference = {k: v for k, v in net.state_dict().items()}
    reference["fc.weight"] = torch.zeros(1000, 512)
    reference["fc.bias"] = torch.zeros(1000)
    torch.save(reference, tmp_path / "imagenet.pth")
    model = build_classifier("resnet18", 2, str(tmp_path / "imagenet.pth"))
    assert torch.equal(model.backbone.conv1.weight, reference["conv1.weight"])
    assert model.backbone.fc.out_features == 2
    build_classifier("resnet18", 2, str(tmp_path / "missing.pth"))
    assert "not found: training resnet18 from scratch" in capsys.readouterr().out
    torch.save({"wrong": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(InputError, match="wrong.pth"):
        build_classifier("resnet18", 2, str(tmp_path / "wrong.pth"))


@pytest.mark.parametrize("backbone", ["resnet34", "resnet50", "densenet169"])
def test_other_backbones_build_with_the_right_head(backbone):
    model = build_classifier(backbone, 3)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)


def test_unknown_strategy_is_rejected(tmp_path):
    with pytest.raises(InputError, match="magic"):
        run(tmp_path, strategy="magic")


def test_killed_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    import histosynth.classification.classifier as clf

    paths, subset = separable_stores(tmp_path)
    cfg = ClassifierConfig(epochs=3, batch_size=16, lr=0.01, eval_batch_size=32, device="cpu")

    def train(tag, **kw):
        out = {k: tmp_path / f"{tag}.{k}" for k in ("metrics", "history", "model")}
        return train_classifier(paths["train"], subset, paths["valid"], paths["test"],
                                metrics_path=out["metrics"], history_path=out["history"],
                                model_path=out["model"], strategy="traditional", seed=0, cfg=cfg, **kw), out

    uninterrupted, _ = train("full")

    # "Kill" the job during epoch 3: after epoch 2's state was saved.
    real_metrics, calls = clf.classification_metrics, []

    def dies_on_third_validation(*a):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_metrics(*a)

    monkeypatch.setattr(clf, "classification_metrics", dies_on_third_validation)
    resume = tmp_path / "resume.pt"
    with pytest.raises(KeyboardInterrupt):
        train("killed", resume_path=resume)
    assert resume.exists() and not (tmp_path / "killed.metrics").exists()
    assert torch.load(resume, weights_only=True)["epoch"] == 2
    monkeypatch.setattr(clf, "classification_metrics", real_metrics)

    resumed, out = train("killed", resume_path=resume)
    assert resumed["test"] == uninterrupted["test"] and resumed["best_epoch"] == uninterrupted["best_epoch"]
    assert len(out["history"].read_text().splitlines()) == 4  # epochs 1-2 kept, 3 trained
    assert not resume.exists()


def test_resume_state_from_other_settings_is_ignored(tmp_path, capsys):
    paths, subset = separable_stores(tmp_path)
    resume = tmp_path / "resume.pt"
    torch.save({"key": "something else", "epoch": 1}, resume)
    out = {k: tmp_path / f"r.{k}" for k in ("metrics", "history", "model")}
    train_classifier(paths["train"], subset, paths["valid"], paths["test"], metrics_path=out["metrics"],
                     history_path=out["history"], model_path=out["model"], resume_path=resume,
                     strategy="baseline", seed=0,
                     cfg=ClassifierConfig(epochs=1, batch_size=16, eval_batch_size=32, device="cpu"))
    assert "from other settings, code or data; training from epoch 1" in capsys.readouterr().out


def synthetic_store(tmp_path, n=32, classes=("normal", "tumor")):
    """A 'generated' set drawn like the real training data (so it carries the same signal)."""
    rng = np.random.default_rng(1)
    y = np.tile([0, 1], n // 2)
    x = rng.integers(0, 100, (n, 32, 32, 3))
    x[y == 1, :, :, 0] += 120
    x[y == 0, :, :, 2] += 120
    path = tmp_path / "synthetic.h5"
    write_store(path, x.astype(np.uint8), y, list(classes))
    return path


def run_synthetic(tmp_path, strategy, resume_path=None, **cfg):
    paths, subset = separable_stores(tmp_path)
    out = {k: tmp_path / f"{strategy}.{k}" for k in ("metrics", "history", "model")}
    cfg = ClassifierConfig(**{"epochs": 2, "batch_size": 16, "lr": 0.01, "eval_batch_size": 32, "device": "cpu", **cfg})
    return train_classifier(paths["train"], subset, paths["valid"], paths["test"], metrics_path=out["metrics"],
                            history_path=out["history"], model_path=out["model"], strategy=strategy, seed=0,
                            cfg=cfg, synthetic_store=synthetic_store(tmp_path), resume_path=resume_path), out


@pytest.mark.parametrize("strategy,n_train,data", [
    ("augment", {"real+synthetic": 96}, ["real+synthetic"] * 2),
    ("synthetic_only", {"synthetic": 32}, ["synthetic"] * 2),
    ("transfer", {"synthetic": 32, "real": 64}, ["synthetic"] * 2 + ["real"] * 2),
])
def test_synthetic_strategies_train_on_the_right_data(tmp_path, strategy, n_train, data):
    result, out = run_synthetic(tmp_path, strategy)
    assert result["n_train"] == n_train
    rows = [line.split("\t") for line in out["history"].read_text().splitlines()]
    assert [r[rows[0].index("data")] for r in rows[1:]] == data
    assert result["test"]["auc"] > 0.9  # validation and test stay real; the synthetic signal transfers


def test_transfer_fine_tunes_from_the_synthetic_only_weights(tmp_path, monkeypatch):
    """Transfer's real phase starts from exactly the weights synthetic_only selects (same seed)."""
    import histosynth.classification.classifier as clf

    _, out = run_synthetic(tmp_path / "a", "synthetic_only")
    loaded = []
    real_load = clf.Classifier.load_state_dict

    def recording_load(self, state, *a, **kw):
        loaded.append({k: v.clone() for k, v in state.items()})
        return real_load(self, state, *a, **kw)

    monkeypatch.setattr(clf.Classifier, "load_state_dict", recording_load)
    transfer, _ = run_synthetic(tmp_path / "b", "transfer")
    selected = torch.load(out["model"], weights_only=True)
    start = loaded[0]  # the first load: the phase switch (the last one restores the real phase's best)
    assert start.keys() == selected.keys()
    assert all(torch.equal(start[k], selected[k]) for k in selected)
    assert transfer["n_train"] == {"synthetic": 32, "real": 64}


def test_transfer_resumes_across_the_phase_boundary(tmp_path, monkeypatch):
    import histosynth.classification.classifier as clf

    full, _ = run_synthetic(tmp_path / "a", "transfer")
    real_metrics, calls = clf.classification_metrics, []

    def dies_in_the_fine_tuning(*a):
        calls.append(1)
        if len(calls) == 4:  # 2 synthetic epochs done, the 1st fine-tuning epoch saved: die in the 2nd
            raise KeyboardInterrupt
        return real_metrics(*a)

    monkeypatch.setattr(clf, "classification_metrics", dies_in_the_fine_tuning)
    resume = tmp_path / "b" / "resume.pt"
    with pytest.raises(KeyboardInterrupt):
        run_synthetic(tmp_path / "b", "transfer", resume_path=resume)
    monkeypatch.setattr(clf, "classification_metrics", real_metrics)
    resumed, _ = run_synthetic(tmp_path / "b", "transfer", resume_path=resume)
    assert resumed["test"] == full["test"] and resumed["best_epoch"] == full["best_epoch"]


def test_synthetic_strategy_input_errors(tmp_path):
    paths, subset = separable_stores(tmp_path)
    out = {k: tmp_path / f"x.{k}" for k in ("metrics", "history", "model")}
    cfg = ClassifierConfig(epochs=1, batch_size=16, eval_batch_size=32, device="cpu")
    with pytest.raises(InputError, match="needs a synthetic training set"):
        train_classifier(paths["train"], subset, paths["valid"], paths["test"], metrics_path=out["metrics"],
                         history_path=out["history"], model_path=out["model"], strategy="augment", seed=0, cfg=cfg)
    with pytest.raises(InputError, match="differ from the real data"):
        train_classifier(paths["train"], subset, paths["valid"], paths["test"], metrics_path=out["metrics"],
                         history_path=out["history"], model_path=out["model"], strategy="augment", seed=0, cfg=cfg,
                         synthetic_store=synthetic_store(tmp_path, classes=("a", "b")))
