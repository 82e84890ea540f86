"""The ViT-cGAN's critic as a classifier (strategy `unified`, vit-cgan-unified-framework.md).

Algorithm 1's inference phase classifies test images with the discriminator's
class head alone. §IV-B picks the epoch on two criteria, the FID of the generated
images and classification on the validation set; the paper does not say how they
combine, so `criterion` offers:

  * ``fid_and_validation`` (default): the snapshot with the lowest sum of its rank
    by EMA-smoothed FID (as `select_checkpoint`) and its rank by validation AUC,
    so neither a sharp generator with a weak critic nor the reverse wins;
  * ``validation``: the best validation AUC (the classifier's own rule);
  * ``fid``: the generator's selected checkpoint.

Ties go to the better validation AUC, then the earlier epoch. The metrics file has
the classifier's layout, so `aggregate` tables it with the ResNet runs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from histosynth.checkpoint import checkpoint_path, load_checkpoint
from histosynth.classification.classifier import scores_for_metrics
from histosynth.classification.metrics import classification_metrics
from histosynth.data.store import read_store
from histosynth.errors import InputError
from histosynth.evaluation.selection import read_scores, select_checkpoint
from histosynth.fileio import write_json, write_text
from histosynth.generative.families import FAMILIES, family_module

CRITERIA = ("fid_and_validation", "validation", "fid")


def load_critic(snapshot_path, device="cpu") -> tuple[torch.nn.Module, dict]:
    """The critic of a ViT-cGAN snapshot file, and the snapshot's model settings."""
    try:
        state = load_checkpoint(snapshot_path)
    except Exception as e:
        raise InputError(f"{snapshot_path}: not a readable generator snapshot ({e})") from e
    family = FAMILIES.get(state.get("family"))
    if family is None or not family.critic_classifies:
        raise InputError(f"{snapshot_path}: the unified strategy needs the snapshot of a generator whose critic "
                         f"classifies ({[n for n, f in FAMILIES.items() if f.critic_classifies]}), "
                         f"this one is {state.get('family')!r}")
    return family_module(state["family"]).critic_from_state(state, device), state["model"]


def critic_metrics(critic, images, labels, batch_size=256, device="cpu") -> dict[str, float]:
    from histosynth.generative.models.vitgan import class_probabilities

    with torch.no_grad():
        proba = class_probabilities(critic, images, batch_size, device)
    return classification_metrics(labels, scores_for_metrics(proba))


def choose_epoch(curve: pd.DataFrame, metric: str, criterion: str) -> int:
    """The epoch `criterion` picks from a curve with `<metric>_ema` and `valid_auc` columns."""
    if criterion not in CRITERIA:
        raise InputError(f"unified.criterion '{criterion}' is not one of {list(CRITERIA)}")
    auc = curve["valid_auc"].fillna(-np.inf)  # an undefined AUC never wins
    fid_rank = curve[f"{metric}_ema"].rank(method="min")
    auc_rank = auc.rank(method="min", ascending=False)
    key = {"fid_and_validation": fid_rank + auc_rank, "validation": auc_rank, "fid": fid_rank}[criterion]
    order = np.lexsort((curve["epoch"].to_numpy(), -auc.to_numpy(), key.to_numpy()))
    return int(curve["epoch"].iloc[order[0]])


def evaluate_unified(scores_path, ckpt_dir, valid_store, test_store, metrics_path, curve_path, *,
                     generator: str, subset: str, seed: int = 0, metric: str = "fid", alpha: float = 0.5,
                     criterion: str = "fid_and_validation", batch_size: int = 256, device="cpu") -> dict:
    """Score every scored snapshot's class head on validation, pick one, test it; write both.

    `curve_path` (TSV): per epoch the selection metric, its EMA and the validation
    metrics. `metrics_path`: the classifier metrics layout with strategy `unified`.
    """
    from tqdm import tqdm

    from histosynth.torch_utils import sampling_device

    device = sampling_device(device)
    scores = read_scores(scores_path, metric)
    _, curve = select_checkpoint(scores, metric, alpha)
    x_valid, y_valid, classes = read_store(valid_store)
    x_test, y_test, test_classes = read_store(test_store)
    if classes != test_classes:
        raise InputError(f"class names differ between {valid_store} and {test_store}")
    valid = []
    for epoch in tqdm(curve["epoch"], desc="class head on validation"):
        critic, _ = load_critic(checkpoint_path(ckpt_dir, int(epoch)), device)
        valid.append(critic_metrics(critic, x_valid, y_valid, batch_size, device))
    for k in valid[0]:
        curve[f"valid_{k}"] = [v[k] for v in valid]
    best = choose_epoch(curve, metric, criterion)
    critic, model = load_critic(checkpoint_path(ckpt_dir, best), device)
    test = critic_metrics(critic, x_test, y_test, batch_size, device)
    row = curve[curve.epoch == best].iloc[0]
    result = {
        "strategy": "unified", "generator": generator, "filter": None, "subset": subset,
        "seed": seed,  # the generator's training seed: one unified run per subset
        "best_epoch": best, "valid": {k: float(row[f"valid_{k}"]) for k in valid[0]}, "test": test,
        "selection": {"criterion": criterion, "metric": metric, "alpha": alpha, metric: float(row[metric]),
                      f"{metric}_ema": float(row[f"{metric}_ema"])},
        "components": {"class_projection": bool(model.get("class_projection", True)),
                       "selective": bool(model.get("selective", True))},
        "class_names": classes, "n_valid": int(len(y_valid)), "n_test": int(len(y_test)), "device": str(device),
    }
    write_text(curve_path, curve.to_csv(sep="\t", index=False, float_format="%.6f"))
    write_json(metrics_path, result)  # written last: its presence means the job finished
    print(f"[unified] {generator} subset {subset}: epoch {best} ({criterion}); test "
          + " ".join(f"{k}={v:.4f}" for k, v in test.items()))
    return result
