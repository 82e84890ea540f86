"""Checkpoint selection: EMA-smoothed FID curve, argmin (HistoGAN §3.1.2, eq. 5).

Raw per-checkpoint FID fluctuates with GAN training instability; the minimum of
the smoothed curve picks a checkpoint from a stretch of consistently good epochs
rather than a lucky outlier.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import InputError
from .fileio import atomic_path, write_json, write_text
from .metrics import ema_smooth


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


def select_checkpoint(scores: pd.DataFrame, metric: str = "fid", alpha: float = 0.5) -> tuple[int, pd.DataFrame]:
    """The epoch minimising the EMA-smoothed `metric`, and the curve with a `<metric>_ema` column.

    Ties go to the earliest epoch.
    """
    curve = scores[["epoch", metric]].copy()
    curve[f"{metric}_ema"] = ema_smooth(curve[metric].to_numpy(), alpha)
    best = int(curve["epoch"].iloc[int(np.argmin(curve[f"{metric}_ema"].to_numpy()))])
    return best, curve


def plot_curve(curve: pd.DataFrame, metric: str, alpha: float, best: int, path, title: str = "") -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(curve.epoch, curve[metric], color="0.6", lw=1, marker=".", label=f"{metric} (raw)")
    ax.plot(curve.epoch, curve[f"{metric}_ema"], color="C0", lw=2, label=f"EMA, α = {alpha:g}")
    ax.axvline(best, color="C3", ls="--", lw=1, label=f"selected: epoch {best}")
    ax.set(xlabel="epoch", ylabel=metric.upper(), title=title)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_selection(scores_path, curve_path, plot_path, choice_path, *, metric: str = "fid",
                    alpha: float = 0.5, title: str = "") -> int:
    """Select from a score table; write the curve (TSV), its plot and the chosen epoch (JSON)."""
    scores = read_scores(scores_path, metric)
    best, curve = select_checkpoint(scores, metric, alpha)
    write_text(curve_path, curve.to_csv(sep="\t", index=False, float_format="%.6f"))
    plot_curve(curve, metric, alpha, best, plot_path, title)
    row = curve[curve.epoch == best].iloc[0]
    write_json(choice_path, {"epoch": best, "metric": metric, "alpha": alpha,
                             metric: float(row[metric]), f"{metric}_ema": float(row[f"{metric}_ema"]),
                             "raw_argmin_epoch": int(curve.epoch.iloc[int(np.argmin(curve[metric]))])})
    print(f"[select_checkpoint] epoch {best} ({metric} {row[metric]:.3f}, EMA {row[f'{metric}_ema']:.3f})")
    return best
