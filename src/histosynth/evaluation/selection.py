"""Checkpoint selection: EMA-smoothed FID curve, argmin (HistoGAN §3.1.2, eq. 5).

Raw per-checkpoint FID fluctuates with GAN training instability; the minimum of
the smoothed curve picks a checkpoint from a stretch of consistently good epochs
rather than a lucky outlier.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from histosynth.errors import InputError
from histosynth.fileio import atomic_path, write_json, write_text


def ema_smooth(values, alpha: float) -> np.ndarray:
    """Exponential moving average of a curve (HistoGAN eq. 5).

    d̂_1 = d_1;  d̂_t = alpha · d̂_{t-1} + (1 - alpha) · d_t.  alpha = 0 leaves the
    curve unchanged; larger alpha smooths more.
    """
    if not 0 <= alpha < 1:
        raise ValueError(f"EMA alpha must be in [0, 1), got {alpha}")
    values = np.asarray(values, dtype=np.float64)
    smoothed = np.empty_like(values)
    for t, d in enumerate(values):
        smoothed[t] = d if t == 0 else alpha * smoothed[t - 1] + (1 - alpha) * d
    return smoothed


def read_scores(path, metric: str) -> pd.DataFrame:
    """Per-checkpoint scores (TSV with an `epoch` column and `metric`), sorted by epoch."""
    try:
        scores = pd.read_csv(path, sep="\t")
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable score table ({e})") from e
    for column in ("epoch", metric):
        if column not in scores:
            raise InputError(f"{path}: missing column '{column}' (columns: {list(scores.columns)})")
    if scores.empty:
        raise InputError(f"{path}: no checkpoints were scored")
    if scores["epoch"].duplicated().any():
        raise InputError(f"{path}: epochs scored twice: {sorted(scores.epoch[scores.epoch.duplicated()])}")
    if not np.isfinite(scores[metric]).all():
        bad = scores.epoch[~np.isfinite(scores[metric])].tolist()
        raise InputError(f"{path}: non-finite {metric} at epochs {bad}")
    return scores.sort_values("epoch").reset_index(drop=True)


SHOWN = ("fid", "kid", "fid_inception", "kid_inception", "precision", "recall", "precision_inception",
         "recall_inception")  # kept in the curve
# selection.alpha's values: the schema's enum (tests/test_defaults.py checks they agree). Training
# keeps every snapshot one of them selects (kept_epochs), so changing alpha never retrains.
ALPHAS = tuple(round(0.1 * i, 1) for i in range(10))


def selectable(columns) -> list[str]:
    """The score-table columns a curve may be selected on: fid and kid per feature space
    (fid, kid, fid_inception, kid_inception, fd_<encoder>, kid_<encoder>)."""
    return [c for c in columns if re.fullmatch(r"(fid|kid)(_[a-z][a-z0-9_]*)?|fd_[a-z][a-z0-9_]*", c)
            and not c.endswith("_std")]


def kept_epochs(scores: pd.DataFrame) -> set[int]:
    """The epochs some selectable metric and some alpha of ALPHAS select (select_checkpoint) from
    the scores so far: the snapshots training keeps (histosynth.generative.training).

    At most len(selectable) x len(ALPHAS) of them whatever the curves, and each epoch selected
    from the whole run is among those selected from every prefix that ends on or after it
    (the EMA is causal), so keeping the current choices loses no final one.
    """
    return {select_checkpoint(scores, metric, alpha)[0] for metric in selectable(scores.columns)
            for alpha in ALPHAS}


def select_checkpoint(scores: pd.DataFrame, metric: str = "fid", alpha: float = 0.5) -> tuple[int, pd.DataFrame]:
    """The epoch minimising the EMA-smoothed `metric`, and the curve with a `<metric>_ema` column.

    The curve keeps every other metric of the score table (raw), so one file shows
    how FID and KID agree. Ties go to the earliest epoch.
    """
    curve = scores[["epoch", *dict.fromkeys([*(m for m in SHOWN if m in scores), metric])]].copy()
    curve[f"{metric}_ema"] = ema_smooth(curve[metric].to_numpy(), alpha)
    best = int(curve["epoch"].iloc[int(np.argmin(curve[f"{metric}_ema"].to_numpy()))])
    return best, curve


def plot_curve(curve: pd.DataFrame, metric: str, alpha: float, best: int, path, title: str = "", *,
               reference: dict | None = None) -> None:
    """One panel per scored metric; the selection metric with its EMA, the chosen epoch on all.

    `reference` (histosynth.evaluation.reference, design "scoring": space -> metrics) draws the
    real-vs-real value of each metric as a horizontal line: a curve is read against it.
    """
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [metric] + [m for m in SHOWN if m in curve and m != metric]
    fig, axes = plt.subplots(len(shown), 1, figsize=(6, 2.2 * len(shown) + 0.6), sharex=True, squeeze=False)
    for ax, m in zip(axes[:, 0], shown):
        ax.plot(curve.epoch, curve[m], color="0.6", lw=1, marker=".", label=f"{m} (raw)")
        if m == metric:
            ax.plot(curve.epoch, curve[f"{m}_ema"], color="C0", lw=2, label=f"EMA, α = {alpha:g}")
        name = m.removesuffix("_inception")
        ref = (reference or {}).get("inception" if m.endswith("_inception") else "domain", {}).get(name)
        if ref is not None:
            ax.axhline(ref, color="C2", lw=1.5, label=f"real vs real: {ref:.3g}")
        ax.axvline(best, color="C3", ls="--", lw=1, label=f"selected: epoch {best}")
        ax.set_ylabel(m.replace("_", " ").upper().replace("INCEPTION", "(Inception)"))
        ax.legend(frameon=False, fontsize=7)
    axes[-1, 0].set_xlabel("epoch")
    axes[-1, 0].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_selection(scores_path, curve_path, choice_path, *, metric: str = "fid", alpha: float = 0.5,
                    snapshots=None) -> int:
    """Select from a score table; write the curve (TSV) and the chosen epoch (JSON).

    `snapshots`: the training's checkpoint directory, which must hold the chosen epoch's
    snapshot (training keeps those of kept_epochs). The curve's plot is drawn by the
    convergence stage, against the real-vs-real reference.
    """
    scores = read_scores(scores_path, metric)
    if metric not in selectable(scores.columns):
        raise InputError(f"selection metric '{metric}' is not one of {selectable(scores.columns)} "
                         f"(scored in {scores_path})")
    best, curve = select_checkpoint(scores, metric, alpha)
    from histosynth.checkpoint import checkpoint_path, list_checkpoints  # torch: not for the plan's ALPHAS

    if snapshots is not None and not checkpoint_path(snapshots, best).is_file():
        kept = [e for e, _ in list_checkpoints(snapshots)]
        raise InputError(f"{metric} with alpha {alpha} selects epoch {best}, whose snapshot training did not keep "
                         f"({snapshots} holds epochs {kept}: those some metric and alpha of {list(ALPHAS)} "
                         "selected when it ran); retrain with `snakemake --forcerun train_generator`")
    write_text(curve_path, curve.to_csv(sep="\t", index=False, float_format="%.6f"))
    row = curve[curve.epoch == best].iloc[0]
    write_json(choice_path, {"epoch": best, "metric": metric, "alpha": alpha,
                             **{m: float(row[m]) for m in curve.columns if m != "epoch"},
                             "raw_argmin_epoch": int(curve.epoch.iloc[int(np.argmin(curve[metric]))])})
    print(f"[select_checkpoint] epoch {best} ({metric} {row[metric]:.4g}, EMA {row[f'{metric}_ema']:.4g})")
    return best
