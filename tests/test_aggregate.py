"""Aggregation maths against pandas/scipy computed independently; table formats; figures."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from histosynth.errors import InputError
from histosynth.reporting.aggregate import aggregate_classification, load_runs, paired_comparison, plot_auc_by_strategy, plot_synthetic_only_auc, read_runs, summarise

METRICS = ["accuracy", "auc", "sensitivity", "specificity"]
SUBSETS = [f"results/x/subsets/subset{i}.npy" for i in range(2)]
SEEDS = [0, 1, 2]
GENERATORS = ["histogan", "ldm_unet"]
FILTERS = ["none", "realism"]


def make_runs(real_only=False):
    """Run dicts as train_classifier writes them; seeded random metrics in [0.5, 0.9)."""
    rng = np.random.default_rng(0)
    groups = [("baseline", None, None), ("traditional", None, None)]
    if not real_only:
        groups += [(s, g, f) for f in FILTERS for s in ("augment", "transfer") for g in GENERATORS]
    runs = []
    for strategy, gen, filt in groups:
        for subset in SUBSETS:
            for seed in SEEDS:
                m = dict(zip(METRICS, 0.5 + 0.4 * rng.random(4)))
                run = {"strategy": strategy, "seed": seed, "subset": subset, "test": m, "best_epoch": 3}
                if gen is not None:
                    run.update(generator=gen, filter=filt)
                elif strategy == "traditional":
                    run.update(generator=None, filter=None)  # null tags: as absent
                runs.append(run)
    # A clear winner (AUC) and a tie (accuracy) to check the best-cell marking.
    for run in runs:
        if (run["strategy"], run.get("generator"), run.get("filter")) == ("transfer", "ldm_unet", "realism"):
            run["test"]["auc"] = 0.99
        if (run["strategy"], run.get("generator"), run.get("filter")) in (
                ("augment", "histogan", "none"), ("transfer", "histogan", "realism")):
            run["test"]["accuracy"] = 0.95
    return runs


def write_metrics(tmp_path, runs):
    paths = []
    for i, run in enumerate(runs):
        p = tmp_path / "classifier" / f"run{i}" / "metrics.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps(run))
        paths.append(p)
    return paths


def flat(runs):
    return pd.DataFrame([{"strategy": r["strategy"], "generator": r.get("generator") or "",
                          "filter": r.get("filter") or "", "subset": r["subset"], "seed": r["seed"], **r["test"]}
                         for r in runs])


def outputs(tmp_path):
    return [tmp_path / "tables" / name for name in
            ("classification.tsv", "classification.md", "classification.tex", "classification.html", "runs.tsv")]


def row_key(table, i):
    return tuple(table.loc[i, ["filter", "strategy", "generator"]])


def md_rows(md):
    """[(section, row name, cells)] of a Markdown table; section is the *italic* row above, or None."""
    rows, section = [], None
    for line in md.splitlines()[2:]:
        if line.startswith("| "):
            name, *cells = [c.strip() for c in line.strip("|").split("|")]
            if name.startswith("*"):
                section = name.strip("*")
                assert cells == [""] * len(cells)
            else:
                rows.append((section, name, cells))
    return rows


def display_key(key):
    """(section, row name) under which a (filter, strategy, generator) group is shown."""
    f, s, g = key
    names = {"baseline": "Baseline", "traditional": "Traditional augmentation", "augment": "augmentation",
             "transfer": "transfer learning", "histogan": "HistoGAN", "ldm_unet": "LDM U-Net",
             "none": "No image selection", "realism": "Realism score image selection"}
    return (names[f] if f else None, f"{names[g]} {names[s]}" if g else names[s])


# --- load_runs ---------------------------------------------------------------


def test_load_runs_one_row_per_run(tmp_path):
    runs = make_runs()
    table = load_runs(write_metrics(tmp_path, runs))
    assert list(table.columns) == ["strategy", "generator", "filter", "subset", "seed", *METRICS]
    assert len(table) == len(runs) == 2 * 3 * (2 + 2 * 2 * 2)
    real = table[table.strategy.isin(["baseline", "traditional"])]
    assert (real.generator == "").all() and (real["filter"] == "").all()
    assert set(table.subset) == set(SUBSETS)
    pd.testing.assert_frame_equal(table[["seed", *METRICS]], flat(runs)[["seed", *METRICS]], check_dtype=False)


@pytest.mark.parametrize("content, match", [
    ("{", "not a readable"),
    ('{"strategy": "baseline", "seed": 0, "subset": "s"}', "missing key"),
    ('{"strategy": "augment", "seed": 0, "subset": "s", "test": {}}', "generator"),
    ('{"strategy": "baseline", "seed": 0, "subset": "s", "test": {"accuracy": 0.5, "auc": 0.5}}', "lacks"),
    ('{"strategy": "baseline", "seed": 0, "subset": "s", '
     '"test": {"accuracy": 1.5, "auc": 0.5, "sensitivity": 0.5, "specificity": 0.5}}', r"\[0, 1\]"),
])
def test_bad_metrics_file_is_named(tmp_path, content, match):
    good = write_metrics(tmp_path, make_runs(real_only=True)[:2])
    p = tmp_path / "broken.json"
    p.write_text(content)
    with pytest.raises(InputError, match=f"broken.json.*{match}"):
        aggregate_classification([*good, p], *outputs(tmp_path))
    assert not any(o.exists() for o in outputs(tmp_path))
    with pytest.raises(InputError, match="missing.json"):
        load_runs([tmp_path / "missing.json"])


def test_duplicate_run_and_no_runs_are_errors(tmp_path):
    run = make_runs(real_only=True)[0]
    with pytest.raises(InputError, match="same run"):
        load_runs(write_metrics(tmp_path, [run, run]))
    with pytest.raises(InputError, match="no classifier metrics"):
        load_runs([])


def test_nan_auc_is_read_and_propagates(tmp_path):
    runs = make_runs(real_only=True)
    runs[0]["test"]["auc"] = float("nan")  # json.dumps writes NaN, as write_json does
    runs[1]["test"]["auc"] = None
    table = load_runs(write_metrics(tmp_path, runs))
    assert table.auc.isna().sum() == 2
    summary = summarise(table)
    assert math.isnan(summary.loc[0, "auc_mean"]) and not math.isnan(summary.loc[1, "auc_mean"])


# --- summarise ---------------------------------------------------------------


def test_mean_and_sample_std_match_pandas_groupby(tmp_path):
    runs = make_runs()
    out = outputs(tmp_path)
    aggregate_classification(write_metrics(tmp_path, runs), *out)
    table = pd.read_csv(out[0], sep="\t", keep_default_na=False, na_values=["NaN"])
    expected = flat(runs).groupby(["filter", "strategy", "generator"])[METRICS]
    mean, std, n = expected.mean(), expected.std(ddof=1), expected.size()
    assert len(table) == len(mean) == 2 + 2 * 2 * 2
    for i in range(len(table)):
        key = row_key(table, i)
        assert table.loc[i, "n"] == n[key] == 6
        for m in METRICS:
            assert table.loc[i, f"{m}_mean"] == pytest.approx(mean.loc[key, m], abs=1e-6)
            assert table.loc[i, f"{m}_std"] == pytest.approx(std.loc[key, m], abs=1e-6)
    assert list(table.columns[:12]) == ["filter", "strategy", "generator", "n", *(f"{m}_mean" for m in METRICS),
                                        *(f"{m}_std" for m in METRICS)]


def test_single_run_has_zero_std(tmp_path):
    table = summarise(load_runs(write_metrics(tmp_path, make_runs(real_only=True)[:1])))
    assert table.loc[0, "n"] == 1 and (table[[f"{m}_std" for m in METRICS]] == 0).all(axis=None)


def test_row_order_follows_table_2():
    runs = flat(make_runs())
    keys = [row_key(t, i) for t in [summarise(runs, strategies=["baseline", "traditional", "augment", "transfer"],
                                              generators=["ldm_unet", "histogan"], filters=["realism", "none"])]
            for i in range(len(t))]
    assert keys == [("", "baseline", ""), ("", "traditional", "")] + [
        (f, s, g) for f in ["realism", "none"] for s in ["augment", "transfer"] for g in ["ldm_unet", "histogan"]]
    # Defaults: the known names in their usual order (none before realism, histogan before ldm_unet).
    default = summarise(runs.sample(frac=1, random_state=1))
    assert [row_key(default, i) for i in range(len(default))] == [("", "baseline", ""), ("", "traditional", "")] + [
        (f, s, g) for f in ["none", "realism"] for s in ["augment", "transfer"] for g in ["histogan", "ldm_unet"]]


def test_groups_outside_the_given_orders_go_after_in_first_seen_order():
    runs = flat(make_runs())
    extra = runs[runs.strategy == "augment"].assign(generator="zeta_gen", filter="my_filter")
    runs = pd.concat([runs, extra.assign(generator="alpha_gen"), extra], ignore_index=True)
    table = summarise(runs, strategies=["traditional", "baseline", "augment", "transfer"],
                      generators=["ldm_unet"], filters=["realism"])
    keys = [row_key(table, i) for i in range(len(table))]
    assert keys[:2] == [("", "traditional", ""), ("", "baseline", "")]
    assert keys[2:6] == [("realism", "augment", "ldm_unet"), ("realism", "augment", "histogan"),
                         ("realism", "transfer", "ldm_unet"), ("realism", "transfer", "histogan")]
    assert keys[6:10] == [("none", "augment", "ldm_unet"), ("none", "augment", "histogan"),
                          ("none", "transfer", "ldm_unet"), ("none", "transfer", "histogan")]
    assert keys[10:] == [("my_filter", "augment", "alpha_gen"), ("my_filter", "augment", "zeta_gen")]
    assert table.n.sum() == len(runs)  # nothing dropped


# --- paired_comparison -------------------------------------------------------


def test_paired_differences_and_p_values_match_scipy(tmp_path):
    runs = make_runs()
    dropped = ("traditional", SUBSETS[1], 2)
    runs = [r for r in runs if (r["strategy"], r["subset"], r["seed"]) != dropped]
    rng = np.random.default_rng(5)
    paths = write_metrics(tmp_path, [runs[i] for i in rng.permutation(len(runs))])  # pairing must not use order
    table = aggregate_classification(paths, *outputs(tmp_path))

    ref = {(r["subset"], r["seed"]): r["test"] for r in runs if r["strategy"] == "traditional"}
    assert len(ref) == 5
    for i in range(len(table)):
        f, s, g = row_key(table, i)
        if s == "traditional":
            assert pd.isna(table.loc[i, "n_pairs"])
            assert table.loc[i, [c for c in table if c.endswith("_diff") or c.endswith("_p")]].isna().all()
            continue
        mine = {(r["subset"], r["seed"]): r["test"] for r in runs
                if (r["strategy"], r.get("generator") or "", r.get("filter") or "") == (s, g, f)}
        common = sorted(set(mine) & set(ref))
        assert table.loc[i, "n_pairs"] == len(common) == 5
        for m in METRICS:
            a = np.array([mine[k][m] for k in common])
            b = np.array([ref[k][m] for k in common])
            assert table.loc[i, f"{m}_diff"] == pytest.approx(np.mean(a - b))
            assert table.loc[i, f"{m}_diff_std"] == pytest.approx(np.std(a - b, ddof=1))
            if np.ptp(a - b) > 1e-12:
                assert table.loc[i, f"{m}_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
                assert table.loc[i, f"{m}_p_wilcoxon"] == pytest.approx(stats.wilcoxon(a - b).pvalue)

    # The TSV holds the same numbers (p-values in significant digits, not rounded to 0).
    tsv = pd.read_csv(outputs(tmp_path)[0], sep="\t", keep_default_na=False, na_values=["NaN"])
    np.testing.assert_allclose(tsv.auc_p.to_numpy(dtype=float), table.auc_p.to_numpy(dtype=float), rtol=1e-5)
    assert list(tsv.columns[-18:]) == ["n_pairs"] + [f"{m}_{c}" for m in METRICS
                                                     for c in ("diff", "diff_std", "p", "p_wilcoxon")] + ["converged"]


def test_unpaired_constant_and_missing_reference_rows():
    runs = flat(make_runs(real_only=True))
    ref = runs[runs.strategy == "traditional"]
    shifted = ref.assign(strategy="augment", generator="cgan", filter="none", accuracy=ref.accuracy - 0.01)
    unpaired = ref.assign(strategy="transfer", generator="cgan", filter="none", subset="elsewhere" + ref.subset)
    single = ref.iloc[:1].assign(strategy="synthetic_only", generator="cgan", filter="none")
    runs = pd.concat([runs, shifted, unpaired, single], ignore_index=True)
    table = paired_comparison(runs).set_index(["strategy"])
    assert table.loc["augment", "n_pairs"] == 6
    assert table.loc["augment", "accuracy_diff"] == pytest.approx(-0.01)
    assert math.isnan(table.loc["augment", "accuracy_p"])  # constant differences: no t-test
    assert table.loc["augment", "accuracy_p_wilcoxon"] == pytest.approx(stats.wilcoxon(np.full(6, -0.01)).pvalue)
    assert table.loc["transfer", "n_pairs"] == 0 and table.loc["transfer"].iloc[3:].isna().all()
    assert table.loc["synthetic_only", "n_pairs"] == 1 and table.loc["synthetic_only", "auc_diff"] == 0
    assert math.isnan(table.loc["synthetic_only", "auc_p"])
    assert math.isnan(table.loc["synthetic_only", "auc_p_wilcoxon"])

    no_ref = paired_comparison(runs[runs.strategy != "traditional"])
    assert no_ref.n_pairs.isna().all() and no_ref.iloc[:, 3:].isna().all(axis=None)
    assert len(no_ref) == len(summarise(runs[runs.strategy != "traditional"]))


# --- tables ------------------------------------------------------------------


def test_best_cells_and_reference_dashes_in_md_tex_html(tmp_path):
    runs = make_runs()
    out = outputs(tmp_path)
    table = aggregate_classification(write_metrics(tmp_path, runs), *out, backbone="densenet169")
    md, tex, html = (out[i].read_text() for i in (1, 2, 3))
    rows = md_rows(md)
    header = md.splitlines()[0]
    assert header.startswith("| DenseNet169 | Accuracy (%) | AUC (%) |")
    assert header.endswith("| ΔAUC vs traditional | ΔAccuracy vs traditional |")

    # Real-data rows first, without a section; then sections per filter; Table 2 names.
    shown = [(sec, name) for sec, name, _ in rows]
    none = "No image selection"
    assert shown[:6] == [(None, "Baseline"), (None, "Traditional augmentation"),
                         (none, "HistoGAN augmentation"), (none, "LDM U-Net augmentation"),
                         (none, "HistoGAN transfer learning"), (none, "LDM U-Net transfer learning")]
    assert shown[6] == ("Realism score image selection", "HistoGAN augmentation") and len(shown) == 10

    # Best per column from pandas (on the shown, rounded percent): the lone 99.00 AUC, the tied
    # 95.00 accuracies, and whichever rows win sensitivity and specificity.
    means = flat(runs).groupby(["filter", "strategy", "generator"])[METRICS].mean()
    for j, m in enumerate(METRICS):
        shown_mean = (100 * means[m]).round(2)
        expected = {display_key(k) for k in shown_mean.index[shown_mean == shown_mean.max()]}
        assert {(sec, name) for sec, name, cells in rows if cells[j].startswith("**")} == expected, m
    assert [cells[1] for sec, name, cells in rows if cells[1].startswith("**")] == ["**99.00 ± 0.00**"]
    assert sum(cells[0].startswith("**") for _, _, cells in rows) == 2

    # Δ columns: reference row dashes; others "+x.xx (p = ...)" from the paired diffs.
    by_name = {(sec, name): cells for sec, name, cells in rows}
    assert by_name[(None, "Traditional augmentation")][-2:] == ["—", "—"]
    base = table[table.strategy == "baseline"].iloc[0]
    assert by_name[(None, "Baseline")][-2].startswith(f"{100 * base.auc_diff:+.2f} (p ")
    for _, name, cells in rows:
        if name != "Traditional augmentation":
            assert all(re.fullmatch(r"[+-]\d+\.\d\d \(p (= \d\.\d{3}|< 0\.001)\)", c) for c in cells[-2:])
    assert "paired t-test" in md

    # LaTeX: escaped, same best cell, dashes.
    assert r"\textbf{99.00 $\pm$ 0.00}" in tex and tex.count(r"\textbf{") == 1 + 2 + 1 + 1
    assert r"$\Delta$AUC vs traditional" in tex and r"AUC (\%)" in tex and "Δ" not in tex and "±" not in tex
    assert re.search(r"Traditional augmentation( & [^&]+){4} & --- & --- \\\\", tex)
    assert r"\multicolumn{7}{l}{\textit{Realism score image selection}}" in tex

    # HTML: a page of its own for the report, the best cell in <b>, the note on the paired test.
    assert html.startswith("<!DOCTYPE html>") and html.count("<table") == 1 and "<style>" in html
    ldm_row = [line for line in html.splitlines() if "LDM U-Net transfer learning" in line][-1]
    assert "<td><b>99.00 ± 0.00</b></td>" in ldm_row
    assert html.count("<b>") == 1 + 2 + 1 + 1
    trad_row = next(line for line in html.splitlines() if "Traditional augmentation" in line)
    assert trad_row.endswith("<td>—</td><td>—</td></tr>")
    assert "paired t-test" in html and "same subset and seed" in html and "n = 6 pairs" in html


def test_baseline_and_traditional_only(tmp_path):
    runs = make_runs(real_only=True)
    out = outputs(tmp_path)
    table = aggregate_classification(write_metrics(tmp_path, runs), *out, strategies=["baseline", "traditional"])
    assert list(table.strategy) == ["baseline", "traditional"] and list(table.n_pairs.astype(object)) == [6, pd.NA]
    md = out[1].read_text()
    assert "*" not in md.split("\n\n")[0].replace("**", "")  # no section rows
    rows = md_rows(md)
    assert [(sec, name) for sec, name, _ in rows] == [(None, "Baseline"), (None, "Traditional augmentation")]
    acc = flat(runs).query("strategy == 'baseline'").accuracy
    assert rows[0][2][0].strip("*") == f"{100 * acc.mean():.2f} ± {100 * acc.std():.2f}"
    assert r"\multicolumn" not in out[2].read_text() and 'class="section"' not in out[3].read_text()
    back = read_runs(out[4])
    pd.testing.assert_frame_equal(back, load_runs(write_metrics(tmp_path / "b", runs)), check_dtype=False)
    for plot in (plot_auc_by_strategy, plot_synthetic_only_auc):  # nothing synthetic: a "no data" figure
        png = tmp_path / f"{plot.__name__}.png"
        plot(out[4], png, generators=GENERATORS, filters=FILTERS, **(
            {"strategies": ["baseline", "traditional"]} if plot is plot_auc_by_strategy else {}))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- figures -----------------------------------------------------------------


def test_figures_are_written(tmp_path):
    runs = make_runs()
    runs += [{**r, "strategy": "synthetic_only"} for r in runs if r["strategy"] == "augment"]
    out = outputs(tmp_path)
    aggregate_classification(write_metrics(tmp_path, runs), *out)
    fig5, fig6 = tmp_path / "fig5.png", tmp_path / "fig6.png"
    plot_auc_by_strategy(out[4], fig5, generators=GENERATORS, filters=FILTERS,
                         strategies=["baseline", "traditional", "augment", "transfer", "synthetic_only"])
    plot_synthetic_only_auc(out[4], fig6, generators=GENERATORS, filters=FILTERS)
    for png in (fig5, fig6):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_rows_trained_on_a_not_converged_generator_are_flagged(tmp_path, monkeypatch):
    """The classification table, its TSV and both figures say which generators failed the verdict."""
    runs = make_runs()
    runs += [{**r, "strategy": "synthetic_only"} for r in runs if r["strategy"] == "augment"]
    verdicts = []
    for gen, subset_ok in (("histogan", (True, True)), ("ldm_unet", (False, True))):
        for subset, ok in enumerate(subset_ok):
            p = tmp_path / f"conv_{gen}_{subset}.json"
            p.write_text(json.dumps({"generator": gen, "subset": subset, "converged": ok, "rule": "FID ≤ 5×"}))
            verdicts.append(p)
    out = outputs(tmp_path)
    table = aggregate_classification(write_metrics(tmp_path, runs), *out, convergence_paths=verdicts)
    md = out[1].read_text()
    assert "| LDM U-Net augmentation ⚠ not converged (1 of 2 subsets) |" in md
    assert "| HistoGAN augmentation |" in md and "⚠ not converged: LDM U-Net" in md
    assert "⚠ not converged" in out[3].read_text() and r"$\dagger$" in out[2].read_text()
    conv = dict(zip(zip(table.strategy, table.generator), table.converged))
    assert conv[("augment", "ldm_unet")] == 0.5 and conv[("augment", "histogan")] == 1.0
    assert np.isnan(conv[("baseline", "")])
    # The legends: capture the labels the figures draw.
    import histosynth.reporting.aggregate as agg

    seen = []
    real_panels = agg._bar_panels
    monkeypatch.setattr(agg, "_bar_panels", lambda fig, axes, panels, x, series, *a: seen.append(
        ([p[0] for p in panels], [s[1] for s in series])) or real_panels(fig, axes, panels, x, series, *a))
    agg.plot_auc_by_strategy(out[4], tmp_path / "f5.png", convergence_paths=verdicts)
    agg.plot_synthetic_only_auc(out[4], tmp_path / "f6.png", convergence_paths=verdicts)
    assert seen[0][0] == ["HistoGAN", "LDM U-Net ⚠ not converged (1 of 2 subsets)"]
    assert seen[1][1] == ["HistoGAN", "LDM U-Net ⚠ not converged (1 of 2 subsets)"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"generator": "x", "subset": 0}))
    with pytest.raises(InputError, match="bad.json"):
        aggregate_classification(write_metrics(tmp_path / "again", runs), *outputs(tmp_path / "again"),
                                 convergence_paths=[bad])
