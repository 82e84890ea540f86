"""Classification results (rule `aggregate`): tables and figures over subsets × seeds.

Input: the classifier's ``metrics.json`` files, one per run (strategy, generator,
filter, subset, seed). Output, as in latent-diffusion-pcam-realism.md:

  * :func:`load_runs` -> the long per-run table (also written as a TSV, so users can
    do their own statistics; the figures read it back);
  * :func:`summarise` -> mean ± sample std per (filter, strategy, generator), in
    Table 2's row order: real-data strategies, then one block per image selection
    filter;
  * :func:`paired_comparison` -> each row against a reference strategy (traditional
    augmentation by default), pairing runs that share the subset and the seed: the
    same real training data and initialisation, so the pair difference removes most
    subset-to-subset variation that a comparison of means would carry;
  * :func:`aggregate_classification` writes the numeric TSV and the Markdown, LaTeX
    and HTML tables (percent, best mean per column in bold, Δ vs the reference);
  * :func:`plot_auc_by_strategy` (Fig. 5) and :func:`plot_synthetic_only_auc` (Fig. 6).
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from histosynth.errors import InputError
from histosynth.fileio import atomic_path, write_text
from histosynth.registry import FILTERS, strategies_on
from histosynth.registry import STRATEGIES as REGISTERED_STRATEGIES
from histosynth.reporting import tables
from histosynth.reporting.tables import FILTER_NAMES, GENERATOR_NAMES, MISSING, best_marks, generator_name

__all__ = [
    "load_runs",
    "read_runs",
    "summarise",
    "paired_comparison",
    "aggregate_classification",
    "plot_auc_by_strategy",
    "plot_synthetic_only_auc",
]

METRICS = ("accuracy", "auc", "sensitivity", "specificity")
LABELS = {"accuracy": "Accuracy (%)", "auc": "AUC (%)", "sensitivity": "Sensitivity (%)",
          "specificity": "Specificity (%)"}
KEYS = ("filter", "strategy", "generator")
RUN_COLUMNS = ("strategy", "generator", "filter", "subset", "seed", *METRICS)

STRATEGIES = tuple(REGISTERED_STRATEGIES)
REAL_STRATEGIES = strategies_on("real")
SYNTHETIC_STRATEGIES = strategies_on("synthetic")

BACKBONE_NAMES = {"resnet18": "ResNet18", "resnet34": "ResNet34", "resnet50": "ResNet50",
                  "densenet169": "DenseNet169"}
STRATEGY_NAMES = {name: REGISTERED_STRATEGIES[name].label for name in REAL_STRATEGIES}
STRATEGY_SUFFIX = {name: s.label for name, s in REGISTERED_STRATEGIES.items() if s.data != "real"}
UNIFIED_SECTION = "Unified model: the ViT-cGAN critic's class head classifies (Algorithm 1)"
FILTER_SHORT = {name: f.short for name, f in FILTERS.items()}

# Differences whose spread is below this are "constant" (float noise, not variance):
# a t statistic on them would be a huge number from rounding, not evidence.
_ZERO_SPREAD = 1e-12


# ---------------------------------------------------------------------------
# Runs


def _load_one(path) -> dict:
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable classifier metrics file ({e})") from e
    if not isinstance(m, dict):
        raise InputError(f"{path}: not a classifier metrics file (a JSON object was expected)")
    missing = [k for k in ("strategy", "seed", "subset", "test") if m.get(k) is None]
    if missing:
        raise InputError(f"{path}: missing key(s) {missing} in classifier metrics file")
    strategy, seed, subset, test = m["strategy"], m["seed"], m["subset"], m["test"]
    if not isinstance(strategy, str) or not strategy:
        raise InputError(f"{path}: 'strategy' must be a non-empty string, got {strategy!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"{path}: 'seed' must be an integer, got {seed!r}")
    if isinstance(subset, bool) or not isinstance(subset, (str, int)):
        raise InputError(f"{path}: 'subset' must be a string, got {subset!r}")
    row = {"strategy": strategy, "generator": "", "filter": "", "subset": str(subset), "seed": seed}
    if strategy not in REAL_STRATEGIES:  # real-data runs do not depend on a generator: always ""
        for key in ("generator", "filter"):
            value = m.get(key)
            needed = strategy in SYNTHETIC_STRATEGIES or (strategy == "unified" and key == "generator")
            if needed and (not isinstance(value, str) or not value):
                raise InputError(f"{path}: strategy '{strategy}' needs a non-empty '{key}', got {value!r}")
            if value is not None and not isinstance(value, str):
                raise InputError(f"{path}: '{key}' must be a string, got {value!r}")
            row[key] = value or ""
        if strategy == "unified" and row["filter"]:
            raise InputError(f"{path}: strategy 'unified' takes no filter, got {row['filter']!r}")
    if not isinstance(test, dict):
        raise InputError(f"{path}: 'test' must be an object of metrics")
    absent = [k for k in METRICS if k not in test]
    if absent:
        raise InputError(f"{path}: 'test' lacks metric(s) {absent}")
    for k in METRICS:
        value = test[k]
        if value is None:  # an undefined AUC (single-class test set) may be written as null
            value = math.nan
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{path}: 'test.{k}' must be a number, got {value!r}")
        if not math.isnan(value) and not 0.0 <= value <= 1.0:
            raise InputError(f"{path}: 'test.{k}' must lie in [0, 1], got {value!r}")
        row[k] = float(value)
    return row


def load_runs(paths) -> pd.DataFrame:
    """One row per classifier run: strategy, generator, filter, subset, seed and the test metrics.

    generator and filter are "" for the real-data strategies. Unreadable files,
    missing keys, bad values and two files for the same run raise InputError naming
    the file(s).
    """
    rows, seen = [], {}
    for path in paths:
        row = _load_one(path)
        key = tuple(row[k] for k in ("strategy", "generator", "filter", "subset", "seed"))
        if key in seen:  # two runs with one (subset, seed) would make the pairing ambiguous
            raise InputError(f"{path} and {seen[key]} are the same run (strategy, generator, filter, subset, "
                             f"seed = {key})")
        seen[key] = path
        rows.append(row)
    if not rows:
        raise InputError("no classifier metrics to aggregate")
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def read_runs(path) -> pd.DataFrame:
    """Read back the runs TSV written by :func:`aggregate_classification`.

    Only the metric columns may hold NaN: an empty generator/filter stays "" and a
    generator called e.g. "NA" stays a name.
    """
    try:
        runs = pd.read_csv(path, sep="\t", keep_default_na=False, na_values={m: ["NaN", "nan", ""] for m in METRICS},
                           dtype={"strategy": str, "generator": str, "filter": str, "subset": str})
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a runs table ({e})") from e
    absent = [c for c in RUN_COLUMNS if c not in runs]
    if absent:
        raise InputError(f"{path}: runs table lacks column(s) {absent}")
    return runs


# ---------------------------------------------------------------------------
# Summary and paired comparison


def _rank(present, given, default) -> dict[str, int]:
    """Position of each value: `given` (or `default`) order first, the rest in first-seen order."""
    order = list(dict.fromkeys(map(str, default if given is None else given)))
    order += [v for v in dict.fromkeys(present) if v not in order]
    return {v: i for i, v in enumerate(order)}


def _group_order(runs: pd.DataFrame, strategies=None, generators=None, filters=None) -> list[tuple]:
    """(filter, strategy, generator) groups in Table 2's order.

    Rows without a filter (the real-data strategies) come first, then one block per
    filter; within a block by strategy, then generator. The unified model's rows
    close the table, as "Ours" in vit-cgan-unified-framework.md Table I. Nothing is
    dropped: values missing from the given orders go after, in first-seen order.
    """
    groups = list(dict.fromkeys(zip(runs["filter"], runs["strategy"], runs["generator"])))
    f_rank = _rank(runs["filter"], filters, FILTER_NAMES)
    s_rank = _rank(runs["strategy"], strategies, STRATEGIES)
    g_rank = _rank(runs["generator"], generators, GENERATOR_NAMES)

    def block(k):
        return len(f_rank) if k[1] == "unified" else -1 if k[0] == "" else f_rank[k[0]]

    return sorted(groups, key=lambda k: (block(k), s_rank[k[1]], g_rank[k[2]]))


def _select(runs: pd.DataFrame, key: tuple) -> pd.DataFrame:
    f, s, g = key
    return runs[(runs["filter"] == f) & (runs["strategy"] == s) & (runs["generator"] == g)]


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample std (ddof=1); NaN propagates (a mean over only some runs would not be
    comparable with the other rows); one value has no spread, reported as 0."""
    if len(values) == 0:
        return math.nan, math.nan
    mean = float(np.mean(values))
    if len(values) == 1:
        return mean, 0.0 if not math.isnan(mean) else math.nan
    return mean, float(np.std(values, ddof=1))


def summarise(runs: pd.DataFrame, strategies=None, generators=None, filters=None) -> pd.DataFrame:
    """One row per (filter, strategy, generator): n, `{m}_mean`, `{m}_std` (ddof=1; 0 when n == 1).

    Row order as :func:`_group_order` (latent-diffusion Table 2). None for an order
    means the known names in their usual order.
    """
    rows = []
    for key in _group_order(runs, strategies, generators, filters):
        sub = _select(runs, key)
        row = dict(zip(KEYS, key), n=len(sub))
        spread = {}
        for m in METRICS:
            row[f"{m}_mean"], spread[f"{m}_std"] = _mean_std(sub[m].to_numpy(dtype=float))
        rows.append({**row, **spread})
    return pd.DataFrame(rows, columns=[*KEYS, "n", *(f"{m}_mean" for m in METRICS), *(f"{m}_std" for m in METRICS)])


PAIRED_COLUMNS = ("n_pairs", *(f"{m}_{s}" for m in METRICS for s in ("diff", "diff_std", "p", "p_wilcoxon")))


def _paired_stats(d: np.ndarray) -> tuple[float, float, float, float]:
    """Mean and std of pair differences, paired t-test and Wilcoxon signed-rank p-values."""
    if len(d) == 0:
        return (math.nan,) * 4
    mean, std = _mean_std(d)
    if np.isnan(d).any():
        return mean, std, math.nan, math.nan
    p_t = p_w = math.nan
    if len(d) >= 2 and np.ptp(d) > _ZERO_SPREAD:  # t undefined (0/0 or x/0) for constant differences
        p_t = float(stats.ttest_rel(d, np.zeros_like(d)).pvalue)
    if (np.abs(d) > _ZERO_SPREAD).any():  # Wilcoxon drops zero differences: needs at least one left
        with warnings.catch_warnings():  # small n / ties: scipy warns and falls back; the p is still valid
            warnings.simplefilter("ignore")
            try:
                p_w = float(stats.wilcoxon(d).pvalue)
            except ValueError:
                p_w = math.nan
    return mean, std, p_t, p_w


def paired_comparison(runs: pd.DataFrame, reference: str = "traditional", *, strategies=None, generators=None,
                      filters=None) -> pd.DataFrame:
    """Each :func:`summarise` row (same order and index) against the `reference` strategy.

    Runs are paired with the reference runs of the same (subset, seed); unpaired runs
    are left out. A `unified` run (one per subset: the critic of that subset's
    ViT-cGAN) is paired with the mean of the reference runs on its subset. Columns: the group keys, `n_pairs` and per metric `{m}_diff` (mean
    of row − reference), `{m}_diff_std`, `{m}_p` (two-sided paired t-test; NaN for
    fewer than 2 pairs or constant differences) and `{m}_p_wilcoxon`. The reference
    row, and every row when no reference run exists, are NA; rows without pairs have
    n_pairs 0. The order arguments must be those given to :func:`summarise`.
    """
    keys = _group_order(runs, strategies, generators, filters)
    ref_keys = [k for k in keys if k[1] == reference]
    if len(ref_keys) > 1:
        raise InputError(f"reference strategy '{reference}' spans several (filter, generator) groups {ref_keys}; "
                         "it must be a single group such as a real-data strategy")
    for key in keys:
        sub = _select(runs, key)
        if sub.duplicated(["subset", "seed"]).any():
            raise InputError(f"group {dict(zip(KEYS, key))} has several runs with the same (subset, seed)")
    ref = _select(runs, ref_keys[0]) if ref_keys else None
    rows = []
    for key in keys:
        row = dict(zip(KEYS, key), n_pairs=pd.NA)
        row.update({c: math.nan for c in PAIRED_COLUMNS[1:]})
        if ref is not None and key != ref_keys[0]:
            if key[1] == "unified":
                per_subset = ref.groupby("subset", as_index=False)[list(METRICS)].mean()
                pairs = _select(runs, key).merge(per_subset, on="subset", suffixes=("", "_ref"))
            else:
                pairs = _select(runs, key).merge(ref, on=["subset", "seed"], suffixes=("", "_ref"))
            row["n_pairs"] = len(pairs)
            for m in METRICS:
                d = (pairs[m] - pairs[f"{m}_ref"]).to_numpy(dtype=float)
                row[f"{m}_diff"], row[f"{m}_diff_std"], row[f"{m}_p"], row[f"{m}_p_wilcoxon"] = _paired_stats(d)
        rows.append(row)
    table = pd.DataFrame(rows, columns=[*KEYS, *PAIRED_COLUMNS])
    table["n_pairs"] = table["n_pairs"].astype("Int64")  # NA for "no comparison", 0 for "no pairs"
    return table


# ---------------------------------------------------------------------------
# Tables


def _row_name(strategy: str, generator: str, convergence=None) -> str:
    """Display name; rows trained on a not-converged generator's images carry the flag."""
    if not generator:
        return STRATEGY_NAMES.get(strategy, strategy)
    name = f"{generator_name(generator)} {STRATEGY_SUFFIX.get(strategy, strategy)}"
    return tables.flag(name, (convergence or {}).get(generator)) if strategy in SYNTHETIC_STRATEGIES else name


def _p_text(p: float) -> str:
    if math.isnan(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _items(table: pd.DataFrame, reference: str, convergence=None) -> tuple[list[str], list[tuple]]:
    """Column labels and table items (see histosynth.reporting.tables): a section per filter block
    (real-data rows come first without one, as in Table 2), a row per group.

    Metric cells: 'mean ± std' in percent, the best shown mean per column in bold.
    Δ cells: mean paired difference in percentage points with the paired t-test p.
    """
    labels, columns = [], []
    for m in METRICS:
        means, stds = table[f"{m}_mean"], table[f"{m}_std"]
        rounded = [round(100 * a, 2) for a in means]
        columns.append([(MISSING if math.isnan(a) else f"{100 * a:.2f} ± {100 * s:.2f}", b)
                        for a, s, b in zip(means, stds, best_marks(rounded))])
        labels.append(LABELS[m])
    for m, name in (("auc", "AUC"), ("accuracy", "Accuracy")):
        cells = []
        for n, d, p in zip(table["n_pairs"], table[f"{m}_diff"], table[f"{m}_p"]):
            shown = not pd.isna(n) and n > 0 and not math.isnan(d)
            cells.append((f"{100 * d:+.2f} ({_p_text(p)})" if shown else MISSING, False))
        columns.append(cells)
        labels.append(f"Δ{name} vs {reference}")
    rows = list(zip(*columns))
    items, current = [], ""
    for i, (f, s, g) in enumerate(zip(table["filter"], table["strategy"], table["generator"])):
        section = UNIFIED_SECTION if s == "unified" else FILTER_NAMES.get(f, f)
        if section != current:
            current = section
            items.append(("section", section))
        items.append(("row", _row_name(s, g, convergence), list(rows[i])))
    return labels, items


def _note(table: pd.DataFrame, reference: str) -> str:
    n = sorted({int(v) for v in table["n_pairs"] if not pd.isna(v) and v > 0})
    pairs = "no pairs" if not n else f"n = {n[0]} pairs" if len(n) == 1 else f"n = {n[0]}–{n[-1]} pairs"
    return (f"Δ: mean difference from {reference} in percentage points over runs with the same subset and seed; "
            f"p: two-sided paired t-test over those pairs ({pairs})."
            + (" Unified rows pair each subset's critic with the mean over that subset's seeds."
               if (table["strategy"] == "unified").any() else ""))


def render(table: pd.DataFrame, title: str, fmt: str, reference: str = "traditional", convergence=None) -> str:
    """The summary + paired table as 'markdown', 'latex' or 'html'; `convergence`
    (tables.read_convergence) flags the rows trained on not-converged generators' images."""
    labels, items = _items(table, reference, convergence)
    trained_on = set(table["generator"][table["strategy"].isin(SYNTHETIC_STRATEGIES)])
    note = " ".join(filter(None, [_note(table, reference), tables.convergence_note(
        {g: v for g, v in (convergence or {}).items() if g in trained_on})]))
    return {"markdown": tables.to_markdown, "latex": tables.to_latex, "html": tables.to_html}[fmt](
        title, labels, items, note)


def _tsv(table: pd.DataFrame) -> str:
    out = table.copy()
    # %.6f would print p-values below 5e-7 as 0: keep them in significant digits.
    for c in [c for c in out if c.endswith("_p") or c.endswith("_p_wilcoxon")]:
        out[c] = [("NaN" if math.isnan(v) else f"{v:.6g}") for v in out[c]]
    return out.to_csv(sep="\t", float_format="%.6f", na_rep="NaN", index=False)


def aggregate_classification(metrics_paths, tsv_path, md_path, tex_path, html_path, runs_path, *,
                             backbone="resnet18", strategies=None, generators=None, filters=None,
                             reference="traditional", convergence_paths=()) -> pd.DataFrame:
    """metrics.json files -> runs TSV, summary TSV, and Markdown/LaTeX/HTML tables like Table 2.

    Returns the summary (:func:`summarise` columns, then :func:`paired_comparison`'s).
    `convergence_paths` (convergence.json per generator and subset) flag the rows trained
    on images of generators that are not converged, in the tables and in the TSV
    (column `converged`: the fraction of subsets whose generator passed; empty for rows
    without synthetic images).
    """
    convergence = tables.read_convergence(convergence_paths)
    title = BACKBONE_NAMES.get(backbone, backbone)
    runs = load_runs(metrics_paths)
    # Full float precision here: this table is for users' own statistics.
    write_text(runs_path, runs.to_csv(sep="\t", na_rep="NaN", index=False))
    orders = {"strategies": strategies, "generators": generators, "filters": filters}
    summary = summarise(runs, **orders)
    paired = paired_comparison(runs, reference, **orders)
    table = pd.concat([summary, paired.drop(columns=list(KEYS))], axis=1)
    table["converged"] = [np.mean([v["converged"] for v in convergence[g].values()])
                          if s in SYNTHETIC_STRATEGIES and g in convergence else math.nan
                          for s, g in zip(table["strategy"], table["generator"])]
    write_text(tsv_path, _tsv(table))
    md = render(table, title, "markdown", reference, convergence)
    write_text(md_path, md)
    write_text(tex_path, render(table, title, "latex", reference, convergence))
    write_text(html_path, render(table, title, "html", reference, convergence))
    print(md)
    return table


# ---------------------------------------------------------------------------
# Figures

_BAR_COLOURS = ("C1", "C3", "C4", "C5", "C6", "C8", "C9", "C7")  # not C2/C0: the baseline/traditional lines
_LINES = (("baseline", "C2", "Baseline"), ("traditional", "C0", "Traditional augmentation"))


def _new_figure(width: float, height: float, n_panels: int = 1):
    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state (as histosynth.evaluation.quality)

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(1, n_panels, sharey=True, squeeze=False)[0]


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def _no_data(path, message: str) -> None:
    fig, (ax,) = _new_figure(6.0, 3.0)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    _save(fig, path)


def _auc_pct(runs: pd.DataFrame) -> tuple[float, float]:
    mean, std = _mean_std(runs["auc"].dropna().to_numpy(dtype=float))  # a figure shows what exists
    return 100 * mean, 100 * std


def _reference_lines(runs: pd.DataFrame) -> list[tuple[float, str, str]]:
    lines = []
    for strategy, colour, label in _LINES:
        mean = _auc_pct(runs[runs["strategy"] == strategy])[0]
        if not math.isnan(mean):
            lines.append((mean, colour, label))
    return lines


def _bar_panels(fig, axes, panels, x_names, series, lines, xlabel: str) -> None:
    """Grouped bars: panels[(panel, x, series)] = (mean, std); horizontal reference lines."""
    width = 0.8 / max(1, len(series))
    tops, bottoms = [v for v, _, _ in lines], [v for v, _, _ in lines]
    for ax, (panel_title, bars) in zip(axes, panels):
        for j, (name, label, colour) in enumerate(series):
            xs = [i for i, x in enumerate(x_names) if (x, name) in bars]
            if not xs:
                continue
            mean = [bars[(x_names[i], name)][0] for i in xs]
            std = [bars[(x_names[i], name)][1] for i in xs]
            ax.bar([i + (j - (len(series) - 1) / 2) * width for i in xs], mean, width, yerr=std, capsize=3,
                   color=colour, label=label)
            tops += [a + s for a, s in zip(mean, std) if not math.isnan(a)]
            bottoms += [a - s for a, s in zip(mean, std) if not math.isnan(a)]
        for value, colour, label in lines:
            ax.axhline(value, color=colour, lw=1.5, ls="--", label=label)
        ax.set_xticks(range(len(x_names)), [FILTER_SHORT.get(x, x) for x in x_names])
        ax.set_xlim(-0.6, len(x_names) - 0.4)  # every filter's slot, even where a panel has no bar there
        ax.set_xlabel(xlabel)
        # The flag on a line of its own: beside a long name it ran off the panel.
        ax.set_title(panel_title.replace(f" {tables.NOT_CONVERGED}", f"\n{tables.NOT_CONVERGED}"))
    # Zoom to the data: the differences of interest are a few tenths of a point of AUC.
    lo, hi = (min(bottoms), max(tops)) if tops else (0.0, 100.0)
    margin = max(0.5, 0.15 * (hi - lo))
    axes[0].set_ylim(max(0.0, lo - margin), min(100.0, hi + margin))
    axes[0].set_ylabel("AUC (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:  # a series may be absent from the first panel
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    # Legend below the panels, as many entries per line as the width holds (~2.2 in each).
    width, height = fig.get_size_inches()
    ncol = max(1, min(len(labels), int(width / 2.2)))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.28 * math.ceil(len(labels) / ncol) / height, 1, 1))


def plot_auc_by_strategy(runs_path, png_path, *, generators=None, filters=None, strategies=None,
                         convergence_paths=()) -> None:
    """Fig. 5: per generator, mean ± std AUC (%) per filter for augment and transfer, with the
    baseline (green) and traditional (blue) mean AUC as lines. synthetic_only is Fig. 6.
    Panels of not-converged generators (convergence_paths) say so in their title."""
    convergence = tables.read_convergence(convergence_paths)
    runs = read_runs(runs_path)
    synthetic = runs[(runs["generator"] != "") & (runs["filter"] != "") & (runs["strategy"] != "synthetic_only")]
    if synthetic.empty:
        _no_data(png_path, "No synthetic augmentation or transfer runs to plot")
        return
    f_rank = _rank(synthetic["filter"], filters, FILTER_NAMES)
    g_rank = _rank(synthetic["generator"], generators, GENERATOR_NAMES)
    s_rank = _rank(synthetic["strategy"], strategies, STRATEGIES)
    x_names = sorted(set(synthetic["filter"]), key=f_rank.get)
    gens = sorted(set(synthetic["generator"]), key=g_rank.get)
    strats = sorted(set(synthetic["strategy"]), key=s_rank.get)
    series = [(s, STRATEGY_SUFFIX.get(s, s).capitalize(), _BAR_COLOURS[i % len(_BAR_COLOURS)])
              for i, s in enumerate(strats)]
    panels = []
    for g in gens:
        sub = synthetic[synthetic["generator"] == g]
        bars = {(f, s): _auc_pct(part) for (f, s), part in sub.groupby(["filter", "strategy"], sort=False)}
        panels.append((tables.flag(generator_name(g), convergence.get(g)), bars))
    # ~1.1 in per filter so "class realism" labels of neighbouring panels do not collide
    panel = 0.8 + len(x_names) * max(1.1, 0.45 * len(strats))
    fig, axes = _new_figure(0.6 + len(gens) * panel, 4.2, len(gens))
    _bar_panels(fig, axes, panels, x_names, series, _reference_lines(runs), "image selection")
    _save(fig, png_path)


def plot_synthetic_only_auc(runs_path, png_path, *, generators=None, filters=None, convergence_paths=()) -> None:
    """Fig. 6: synthetic_only mean ± std AUC (%) per filter, one bar per generator, with the
    baseline (green) and traditional (blue) mean AUC as lines; not-converged generators'
    legend entries say so (convergence_paths)."""
    convergence = tables.read_convergence(convergence_paths)
    runs = read_runs(runs_path)
    synthetic = runs[(runs["strategy"] == "synthetic_only") & (runs["filter"] != "")]
    if synthetic.empty:
        _no_data(png_path, "No synthetic-only runs to plot")
        return
    f_rank = _rank(synthetic["filter"], filters, FILTER_NAMES)
    g_rank = _rank(synthetic["generator"], generators, GENERATOR_NAMES)
    x_names = sorted(set(synthetic["filter"]), key=f_rank.get)
    gens = sorted(set(synthetic["generator"]), key=g_rank.get)
    series = [(g, tables.flag(generator_name(g), convergence.get(g)), _BAR_COLOURS[i % len(_BAR_COLOURS)])
              for i, g in enumerate(gens)]
    bars = {(f, g): _auc_pct(part) for (f, g), part in synthetic.groupby(["filter", "generator"], sort=False)}
    fig, axes = _new_figure(max(5.5, 1.2 + len(x_names) * max(1.1, 0.45 * len(gens))), 4.2)
    _bar_panels(fig, axes, [("Synthetic data only", bars)], x_names, series, _reference_lines(runs),
                "image selection")
    _save(fig, png_path)
