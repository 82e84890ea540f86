"""Downstream classifier: train on a real subset, pick the epoch on validation, test.

Follows the latent-diffusion PCam protocol (ResNet18, SGD with momentum 0.9,
lr 1e-4, batch 32, 100 epochs, ImageNet initialisation when available).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from tqdm import tqdm

from histosynth.checkpoint import remove_resume_state, resume_or_start, save_resume_state
from histosynth.data.augment import AugmentConfig
from histosynth.data.batches import BatchIterator
from histosynth.data.split import read_subset
from histosynth.data.store import read_store
from histosynth.errors import InputError
from histosynth.classification.metrics import classification_metrics
from histosynth.fileio import atomic_path, write_history, write_json
from histosynth.registry import strategies_on
from histosynth.torch_utils import pick_device

BACKBONES = ("resnet18", "resnet34", "resnet50", "densenet169")
STRATEGIES = strategies_on("real") + strategies_on("synthetic")  # `unified` trains no classifier of its own
SYNTHETIC_STRATEGIES = strategies_on("synthetic")  # need a filtered synthetic set


def training_phases(strategy: str, real: tuple, synthetic: tuple | None) -> list[tuple[str, tuple]]:
    """The (name, (images, labels)) training sets a strategy trains on, in order.

    augment: real and synthetic shuffled together; synthetic_only: synthetic only (the
    latent-diffusion paper's Fig. 6); transfer: synthetic, then fine-tuning on real from the
    synthetic phase's selected weights (its §4.2). Validation and test are always real.
    """
    if strategy in SYNTHETIC_STRATEGIES and synthetic is None:
        raise InputError(f"strategy '{strategy}' needs a synthetic training set")
    if strategy == "augment":
        return [("real+synthetic", (np.concatenate([real[0], synthetic[0]]), np.concatenate([real[1], synthetic[1]])))]
    if strategy == "synthetic_only":
        return [("synthetic", synthetic)]
    if strategy == "transfer":
        return [("synthetic", synthetic), ("real", real)]
    return [("real", real)]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ClassifierConfig:
    backbone: str = "resnet18"
    pretrained_weights: str | None = None  # torchvision ImageNet state dict (.pth), if present
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    eval_batch_size: int = 256
    device: str = "auto"  # auto | cpu | cuda
    augmentation: dict = field(default_factory=dict)  # AugmentConfig fields, for `traditional`
    code: str = ""  # hash of the stage's modules (provenance.py): edited code never resumes an old run



class Classifier(nn.Module):
    """Backbone with ImageNet input normalisation built in: it takes images in [0, 1]."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) / self.std)


def build_classifier(backbone: str, n_classes: int, pretrained_weights: str | None = None) -> Classifier:
    """A torchvision backbone with an `n_classes` head, ImageNet-initialised when weights exist."""
    if backbone not in BACKBONES:
        raise InputError(f"classifier.backbone '{backbone}' is not one of {list(BACKBONES)}")
    net = getattr(torchvision.models, backbone)(weights=None)
    if pretrained_weights and Path(pretrained_weights).is_file():
        try:
            state = torch.load(pretrained_weights, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except Exception as e:  # wrong architecture, corrupt file, pickle payload
            raise InputError(
                f"{pretrained_weights}: not a torchvision {backbone} ImageNet state dict ({e})"
            ) from e
        print(f"[classifier] {backbone} initialised from ImageNet weights {pretrained_weights}")
    elif pretrained_weights:
        print(f"[classifier] ImageNet weights {pretrained_weights} not found: training {backbone} from scratch")
    else:
        print(f"[classifier] no ImageNet weights configured: training {backbone} from scratch")
    # Replace the 1000-way ImageNet head with one for our classes.
    if backbone.startswith("resnet"):
        net.fc = nn.Linear(net.fc.in_features, n_classes)
    else:
        net.classifier = nn.Linear(net.classifier.in_features, n_classes)
    return Classifier(net)


def eval_batches(images: np.ndarray, batch_size: int, device: torch.device) -> BatchIterator:
    """Images in file order, no augmentation; built once so they move to the device once."""
    return BatchIterator(images, np.zeros(len(images), np.int64), batch_size, shuffle=False,
                         augment=None, seed=0, device=device, channels_last=device.type == "cuda")


@torch.no_grad()
def predict_proba(model: nn.Module, batches: BatchIterator) -> np.ndarray:
    """Softmax class probabilities (N, C), in the order of `batches`."""
    model.eval()
    out = []
    for x, _ in batches:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            logits = model(x)
        out.append(F.softmax(logits.float(), dim=1).cpu())
    return torch.cat(out).numpy().astype(np.float64)


def scores_for_metrics(proba: np.ndarray) -> np.ndarray:
    """Binary tasks are scored by P(class 1); multi-class by the full probability matrix."""
    return proba[:, 1] if proba.shape[1] == 2 else proba


def train_classifier(
    train_store, subset_path, valid_store, test_store, *,
    metrics_path, history_path, model_path, resume_path=None,
    strategy: str, seed: int, cfg: ClassifierConfig, synthetic_store=None, tags: dict | None = None,
) -> dict:
    """Train one (subset, strategy, seed) classifier; write test metrics, history and weights.

    Strategies with synthetic data read the filtered images from `synthetic_store`
    (see `training_phases`); `tags` (e.g. generator and filter) are recorded in the
    metrics for aggregation. Every phase trains `cfg.epochs` epochs and keeps the
    epoch with the best validation AUC. With `resume_path`, the full training state
    is saved there after every epoch and a killed job continues from it (same result
    as an uninterrupted run), provided the configuration and data are unchanged; it
    is deleted when the job finishes.
    """
    if strategy not in STRATEGIES:
        raise InputError(f"strategy '{strategy}' is not one of {list(STRATEGIES)}")
    device = pick_device(cfg.device)
    torch.manual_seed(seed)
    np.random.seed(seed)

    subset = read_subset(subset_path)
    x_train, y_train, class_names = read_store(train_store, subset)
    x_valid, y_valid, valid_classes = read_store(valid_store)
    x_test, y_test, test_classes = read_store(test_store)
    if not (class_names == valid_classes == test_classes):
        raise InputError(f"class names differ between {train_store}, {valid_store} and {test_store}")
    synthetic = None
    if strategy in SYNTHETIC_STRATEGIES and synthetic_store is not None:
        x_syn, y_syn, syn_classes = read_store(synthetic_store)
        if syn_classes != class_names:
            raise InputError(f"{synthetic_store}: classes {syn_classes} differ from the real data's {class_names}")
        synthetic = (x_syn, y_syn)
    phases = training_phases(strategy, (x_train, y_train), synthetic)
    print(f"[classifier] strategy={strategy} seed={seed} device={device} "
          + " ".join(f"{name}={len(d[1])}" for name, d in phases)
          + f" valid={len(x_valid)} test={len(x_test)} classes={class_names}")

    # Traditional augmentation for every strategy but the baseline (both papers augment
    # when they add synthetic images).
    augment = AugmentConfig(**cfg.augmentation) if strategy != "baseline" else None
    phase_batches = [BatchIterator(x, y, cfg.batch_size, shuffle=True, augment=augment, seed=seed, device=device,
                                   drop_last=len(x) > cfg.batch_size,
                                   channels_last=device.type == "cuda")  # faster convolutions on tensor cores
                     for _, (x, y) in phases]
    valid_batches = eval_batches(x_valid, cfg.eval_batch_size, device)

    def new_optimizer(model):
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def fresh():
        torch.manual_seed(seed)
        model = build_classifier(cfg.backbone, len(class_names), cfg.pretrained_weights).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        return model, new_optimizer(model)

    def restore(objects, state):
        objects[0].load_state_dict(state["model"])
        objects[1].load_state_dict(state["optimizer"])

    # What the saved state must match to be resumed: anything else trains afresh.
    run_key = json.dumps({"cfg": asdict(cfg), "strategy": strategy, "seed": seed, "n_valid": len(x_valid),
                          "subset": hashlib.sha256(subset.tobytes()).hexdigest(),
                          "synthetic": hashlib.sha256(synthetic[1].tobytes()).hexdigest() if synthetic else None},
                         sort_keys=True)
    (model, opt), state = resume_or_start(resume_path, run_key, "classifier", fresh(), restore=restore, fresh=fresh)
    history, best, best_state, start = [], {"auc": -math.inf}, None, 1
    if state is not None:
        history, best, best_state, start = state["history"], state["best"], state["best_state"], state["epoch"] + 1
    # One step per (phase, epoch); `epoch` in the resume state counts steps.
    for step in range(start, len(phases) * cfg.epochs + 1):
        phase, epoch = divmod(step - 1, cfg.epochs)
        epoch += 1
        data_name = phases[phase][0]
        if phase > 0 and epoch == 1:
            # Fine-tune from the previous phase's selected weights, with a fresh optimiser.
            model.load_state_dict(best_state)
            opt, best, best_state = new_optimizer(model), {"auc": -math.inf}, None
        batches = phase_batches[phase]
        batches.set_epoch(epoch - 1)  # this epoch's data order and augmentation, as in an uninterrupted run
        model.train()
        t0, total, n = time.perf_counter(), 0.0, 0
        for x, y in tqdm(batches, desc=f"{data_name} epoch {epoch}/{cfg.epochs}", leave=False, mininterval=5):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            n += len(y)
        train_loss = total / max(n, 1)
        if not math.isfinite(train_loss):
            raise RuntimeError(f"classifier training diverged: loss {train_loss} at epoch {epoch} ({data_name})")
        val = classification_metrics(y_valid, scores_for_metrics(predict_proba(model, valid_batches)))
        row = {"epoch": epoch, "train_loss": train_loss, **{f"val_{k}": v for k, v in val.items()},
               "seconds": time.perf_counter() - t0, "data": data_name}
        history.append(row)
        print("[classifier] " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in row.items()))
        # Model selection on validation AUC; NaN (single-class validation) never wins.
        if val["auc"] > best["auc"] or best_state is None:
            best = {"epoch": epoch, **val}
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if resume_path:
            save_resume_state(resume_path, {"key": run_key, "epoch": step, "model": model.state_dict(),
                                            "optimizer": opt.state_dict(), "history": history, "best": best,
                                            "best_state": best_state})

    model.load_state_dict(best_state)
    del valid_batches  # free device memory before the test set moves there
    test_proba = predict_proba(model, eval_batches(x_test, cfg.eval_batch_size, device))
    test = classification_metrics(y_test, scores_for_metrics(test_proba))
    result = {
        "strategy": strategy, "seed": seed, "subset": str(subset_path), **(tags or {}),
        "best_epoch": best["epoch"], "valid": {k: v for k, v in best.items() if k != "epoch"},
        "test": test, "n_train": {name: int(len(d[1])) for name, d in phases}, "class_names": class_names,
        "config": asdict(cfg), "device": str(device),
    }
    with atomic_path(model_path) as tmp:
        torch.save(best_state, tmp)
    write_history(history_path, history)
    write_json(metrics_path, result)  # written last: its presence means the job finished
    if resume_path:
        remove_resume_state(resume_path)
    print(f"[classifier] best epoch {best['epoch']}; test " + " ".join(f"{k}={v:.4f}" for k, v in test.items()))
    return result
