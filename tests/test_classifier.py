"""Classifier stage on a micro dataset: it learns, selects on validation, writes results."""

import json

import numpy as np
import pytest
import torch

from histosynth.classifier import ClassifierConfig, build_classifier, train_classifier
from histosynth.errors import InputError
from histosynth.store import write_store


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
