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

Ties go to the better validation AUC, then the earlier epoch. Training scores every
snapshot's class head as it writes the snapshot (histosynth.evaluation.scoring), so the
choice needs no snapshot on disk. The metrics file has the classifier's layout, so
`aggregate` tables it with the ResNet runs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from histosynth.errors import InputError
from histosynth.evaluation.selection import read_scores, select_checkpoint
from histosynth.fileio import write_json, write_text
from histosynth.generative.families import FAMILIES

CRITERIA = ("fid_and_validation", "validation", "fid")


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


def evaluate_unified(scores_path, valid_store, test_store, metrics_path, curve_path, *, generator: str,
                     subset: str, model: dict, seed: int = 0, metric: str = "fid", alpha: float = 0.5,
                     criterion: str = "fid_and_validation") -> dict:
    """Pick a snapshot by `criterion` from the scores training wrote and report its class head's test metrics.

    Training scored every snapshot's class head on the validation and test images as it
    wrote it (columns critic_valid_<metric>, critic_test_<metric>: histosynth.evaluation.scoring),
    so no snapshot is read here; the choice looks at validation only. `model`: the
    generator's model settings (its components). `curve_path` (TSV): per epoch the
    selection metric, its EMA and the validation metrics. `metrics_path`: the classifier
    metrics layout with strategy `unified`.
    """
    from histosynth.data.store import store_info

    scores = read_scores(scores_path, metric)
    names = [c.removeprefix("critic_valid_") for c in scores.columns if c.startswith("critic_valid_")]
    if not names:
        raise InputError(f"{scores_path}: no critic_valid_* columns: the unified strategy needs a generator whose "
                         f"critic classifies ({[n for n, f in FAMILIES.items() if f.critic_classifies]})")
    _, curve = select_checkpoint(scores, metric, alpha)
    valid, test = store_info(valid_store), store_info(test_store)
    if valid.class_names != test.class_names:
        raise InputError(f"class names differ between {valid_store} and {test_store}")
    for k in names:
        curve[f"valid_{k}"] = scores[f"critic_valid_{k}"].to_numpy()
    best = choose_epoch(curve, metric, criterion)
    row = curve[curve.epoch == best].iloc[0]
    chosen = scores[scores.epoch == best].iloc[0]
    result = {
        "strategy": "unified", "generator": generator, "filter": None, "subset": subset,
        "seed": seed,  # the generator's training seed: one unified run per subset
        "best_epoch": best, "valid": {k: float(row[f"valid_{k}"]) for k in names},
        "test": {k: float(chosen[f"critic_test_{k}"]) for k in names},
        "selection": {"criterion": criterion, "metric": metric, "alpha": alpha, metric: float(row[metric]),
                      f"{metric}_ema": float(row[f"{metric}_ema"])},
        "components": {"class_projection": bool(model.get("class_projection", True)),
                       "selective": bool(model.get("selective", True))},
        "class_names": valid.class_names, "n_valid": valid.n, "n_test": test.n,
    }
    write_text(curve_path, curve.to_csv(sep="\t", index=False, float_format="%.6f"))
    write_json(metrics_path, result)  # written last: its presence means the job finished
    print(f"[unified] {generator} subset {subset}: epoch {best} ({criterion}); test "
          + " ".join(f"{k}={v:.4f}" for k, v in result["test"].items()))
    return result
