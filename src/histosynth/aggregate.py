"""Result tables: mean ± std over subsets × seeds, in the papers' percent format."""

from __future__ import annotations

import json

import pandas as pd

from .errors import InputError
from .fileio import write_text

METRICS = ("accuracy", "auc", "sensitivity", "specificity")
LABELS = {"accuracy": "Accuracy (%)", "auc": "AUC (%)", "sensitivity": "Sensitivity (%)",
          "specificity": "Specificity (%)"}
STRATEGY_NAMES = {"baseline": "Baseline", "traditional": "Traditional augmentation"}
BACKBONE_NAMES = {"resnet18": "ResNet18", "resnet34": "ResNet34", "resnet50": "ResNet50",
                  "densenet169": "DenseNet169"}


def load_runs(metrics_paths) -> pd.DataFrame:
    """One row per finished classifier run: strategy, subset, seed and test metrics."""
    rows = []
    for path in metrics_paths:
        try:
            with open(path) as f:
                m = json.load(f)
            rows.append({"strategy": m["strategy"], "subset": m["subset"], "seed": m["seed"],
                         **{k: m["test"][k] for k in METRICS}})
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"{path}: not a classifier metrics file ({e!r})") from e
    if not rows:
        raise InputError("no classifier metrics to aggregate")
    return pd.DataFrame(rows)


def summarise(runs: pd.DataFrame, order=None) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1) per strategy; `n` runs each.

    A single run has no spread: its std is reported as 0 rather than NaN.
    """
    g = runs.groupby("strategy", sort=False)[list(METRICS)]
    table = g.mean().add_suffix("_mean").join(g.std(ddof=1).fillna(0.0).add_suffix("_std"))
    table.insert(0, "n", g.size())
    if order is not None:
        table = table.loc[[s for s in order if s in table.index]]
    return table


def _cells(table: pd.DataFrame) -> pd.DataFrame:
    """'82.16 ± 0.23' strings (percent, two decimals) as in the papers' tables."""
    return pd.DataFrame({
        LABELS[m]: [f"{100 * a:.2f} ± {100 * s:.2f}" for a, s in zip(table[f"{m}_mean"], table[f"{m}_std"])]
        for m in METRICS
    }, index=[STRATEGY_NAMES.get(s, s) for s in table.index])


def to_markdown(table: pd.DataFrame, title: str) -> str:
    cells = _cells(table)
    head = "| " + " | ".join([title, *cells.columns]) + " |"
    sep = "|" + "|".join(["---"] + ["---:"] * len(cells.columns)) + "|"
    body = ["| " + " | ".join([name, *row]) + " |" for name, row in zip(cells.index, cells.values)]
    return "\n".join([head, sep, *body]) + "\n"


def to_latex(table: pd.DataFrame, title: str) -> str:
    cells = _cells(table)
    esc = lambda s: s.replace("%", r"\%").replace("±", r"$\pm$").replace("_", r"\_")  # noqa: E731
    lines = [r"\begin{tabular}{l" + "c" * len(cells.columns) + "}", r"\toprule",
             " & ".join([esc(title), *map(esc, cells.columns)]) + r" \\", r"\midrule"]
    lines += [" & ".join([esc(name), *map(esc, row)]) + r" \\" for name, row in zip(cells.index, cells.values)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def aggregate_classification(metrics_paths, tsv_path, md_path, tex_path, *, backbone="resnet18",
                             strategies=None) -> pd.DataFrame:
    backbone = BACKBONE_NAMES.get(backbone, backbone)
    runs = load_runs(metrics_paths)
    table = summarise(runs, order=strategies)
    write_text(tsv_path, table.to_csv(sep="\t", float_format="%.6f", index_label="strategy"))
    write_text(md_path, to_markdown(table, backbone))
    write_text(tex_path, to_latex(table, backbone))
    print(to_markdown(table, backbone))
    return table
