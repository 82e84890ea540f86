"""Quality stage library: metrics vs direct calls, table maths and layout, feature-map plot."""

import json
import sys

import numpy as np
import pandas as pd
import pytest

from histosynth.errors import InputError
from histosynth.evaluation.features import gaussian_stats
from histosynth.evaluation.metrics import (density_coverage, f1_score, frechet_distance, kernel_inception_distance,
                                           precision_recall, realism_score)
from histosynth.evaluation.quality import aggregate_quality, plot_feature_map, quality_metrics, write_quality


def features(seed, n_real=120, n_fake=100, dim=8, shift=0.3, scale=1.2):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_real, dim)), rng.normal(shift, scale, size=(n_fake, dim))


# --- quality_metrics / write_quality ----------------------------------------


def test_quality_metrics_match_direct_calls():
    real, fake = features(0)
    q = quality_metrics(real, fake, k=4, kid_subsets=7, kid_subset_size=50, seed=3)
    assert set(q) == {"fid", "kid", "kid_std", "precision", "recall", "f1", "density", "coverage", "realism"}
    assert all(type(v) is float for v in q.values())
    assert q["fid"] == frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))
    assert (q["kid"], q["kid_std"]) == kernel_inception_distance(real, fake, n_subsets=7, subset_size=50, seed=3)
    assert (q["precision"], q["recall"]) == precision_recall(real, fake, 4)
    assert q["f1"] == f1_score(q["precision"], q["recall"])
    assert (q["density"], q["coverage"]) == density_coverage(real, fake, 5)  # Naeem et al.'s k, not P/R's
    assert q["realism"] == realism_score(real, fake, 4).mean()
    assert 0 < q["precision"] < 1 and 0 < q["recall"] < 1 and q["fid"] > 0


def test_identical_sets_are_perfect_and_a_shift_is_worse():
    real, fake = features(1)
    same = quality_metrics(real, real.copy(), kid_subsets=20)
    assert same["fid"] == pytest.approx(0, abs=1e-8)
    assert same["precision"] == same["recall"] == same["f1"] == 1.0
    shifted = quality_metrics(real, real + 2.0, kid_subsets=20)
    assert abs(same["kid"]) < 0.05 * shifted["kid"]
    assert shifted["fid"] == pytest.approx(2.0 ** 2 * real.shape[1], rel=1e-9)  # only the means differ
    assert shifted["precision"] < 0.5
    # A sample of the real set lies inside the real manifold.
    assert quality_metrics(real, real[::3])["precision"] == 1.0


@pytest.mark.parametrize("real, fake, match", [
    (np.zeros((20, 4)), np.zeros((20, 5)), "dimension: 4 vs 5"),
    (np.ones((3, 4)), np.ones((20, 4)), "real_features has 3 samples.*at least 4"),
    (np.ones((20, 4)), np.ones((2, 4)), "fake_features has 2 samples"),
    (np.ones(20), np.ones((20, 1)), r"\(N, D\)"),
    (np.full((20, 4), np.nan), np.ones((20, 4)), "NaN"),
])
def test_quality_metrics_input_errors(real, fake, match):
    with pytest.raises(InputError, match=match):
        quality_metrics(real, fake)


def test_quality_metrics_bad_k():
    real, fake = features(0)
    with pytest.raises(InputError, match="k"):
        quality_metrics(real, fake, k=0)


def test_write_quality_json(tmp_path):
    real, fake = features(2)
    inc_real, inc_fake = features(3, dim=5)
    p = tmp_path / "q" / "domain_only.json"
    written = write_quality(p, {"domain": (real, fake), "inception": None}, generator="histogan",
                            filter="realism", subset=2, kid_subsets=5)
    q = json.loads(p.read_text())
    assert q == written
    assert (q["generator"], q["filter"], q["subset"]) == ("histogan", "realism", 2)
    assert "inception" not in q
    assert q["domain"] == {**quality_metrics(real, fake, kid_subsets=5), "n_real": 120, "n_fake": 100}

    p2 = tmp_path / "both.json"
    q2 = write_quality(p2, {"domain": (real, fake), "inception": (inc_real, inc_fake[:40])},
                       generator="cgan", filter="none", subset="0", kid_subsets=5)
    assert q2["inception"]["n_fake"] == 40 and q2["inception"]["fid"] > 0
    assert q2["domain"] == q["domain"]
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []  # no temporaries left


def test_write_quality_errors(tmp_path):
    real, fake = features(0)
    p = tmp_path / "q.json"
    kw = dict(generator="histogan", filter="none", subset=0)
    with pytest.raises(InputError, match="domain"):
        write_quality(p, {"inception": (real, fake)}, **kw)
    for bad in ("pixel", "Bad-Name"):  # a name the files use for something else, or no identifier
        with pytest.raises(InputError, match="unknown feature space"):
            write_quality(p, {"domain": (real, fake), bad: (real, fake)}, **kw)
    with pytest.raises(InputError, match="inception features: .*dimension"):
        write_quality(p, {"domain": (real, fake), "inception": (real, fake[:, :3])}, **kw)
    assert not p.exists()


# --- aggregate_quality --------------------------------------------------------

KEYS = ("fid", "kid", "precision", "recall", "f1", "density", "coverage", "realism")


def write_json(tmp_path, generator, filt, subset, domain, inception=None):
    q = {"generator": generator, "filter": filt, "subset": subset, "domain": {**domain, "kid_std": 0.001}}
    if inception is not None:
        q["inception"] = inception
    p = tmp_path / f"{generator}_{filt}_{subset}.json"
    p.write_text(json.dumps(q))
    return p


def make_runs(tmp_path, n_subsets=3, inception=False):
    rng = np.random.default_rng(0)
    paths, rows = [], []
    for gi, gen in enumerate(("histogan", "cgan")):
        for fi, filt in enumerate(("none", "realism")):
            for s in range(n_subsets):
                d = {"fid": 30 + 40 * gi + 5 * fi + rng.random(), "kid": 0.01 + 0.02 * gi + 0.001 * rng.random(),
                     "precision": 0.6 - 0.2 * gi + 0.05 * rng.random(), "recall": 0.1 + 0.1 * fi + 0.01 * rng.random()}
                d["f1"] = f1_score(d["precision"], d["recall"])
                d["density"] = 0.9 - 0.1 * gi + 0.03 * fi + 0.01 * rng.random()
                d["coverage"] = 0.5 + 0.1 * fi + 0.01 * rng.random()
                d["realism"] = 1.1 - 0.3 * gi + 0.05 * fi + 0.01 * rng.random()
                inc = {k: 100 + 10 * gi + rng.random() if k == "fid" else 0.05 + rng.random() / 100 for k in KEYS}
                paths.append(write_json(tmp_path, gen, filt, s, d, inc if inception else None))
                rows.append({"generator": gen, "filter": filt, **d, **{f"inception_{k}": inc[k] for k in KEYS}})
    return paths, pd.DataFrame(rows)


def outputs(tmp_path):
    return [tmp_path / "tables" / f"quality.{e}" for e in ("tsv", "md", "tex")]


def cell(values, scale):
    return f"{scale * values.mean():.2f} ± {scale * values.std(ddof=1):.2f}"


def test_mean_std_best_and_order(tmp_path):
    paths, df = make_runs(tmp_path)
    out = outputs(tmp_path)
    table = aggregate_quality(paths, *out, generators=["cgan", "histogan"], filters=["realism", "none"])
    tsv = pd.read_csv(out[0], sep="\t")
    assert list(zip(tsv.generator, tsv["filter"])) == [("cgan", "realism"), ("histogan", "realism"),
                                                       ("cgan", "none"), ("histogan", "none")]
    assert list(tsv.n) == [3] * 4 and list(tsv.subsets) == ["0,1,2"] * 4
    assert tsv.inception_fid_mean.isna().all()
    for _, row in tsv.iterrows():
        sub = df[(df.generator == row.generator) & (df["filter"] == row["filter"])]
        for k in KEYS:
            assert row[f"domain_{k}_mean"] == pytest.approx(sub[k].mean(), abs=1e-6)
            assert row[f"domain_{k}_std"] == pytest.approx(np.std(sub[k], ddof=1), abs=1e-6)
    assert len(table) == 4

    md = out[1].read_text().splitlines()
    assert md[0] == ("| Model | FID ↓ | KID ×10³ ↓ | Improved precision (%) ↑ | Improved recall (%) ↑ "
                     "| Improved F1-score (%) ↑ | Density ↑ | Coverage (%) ↑ | Mean realism ↑ |")
    assert "Inception" not in "\n".join(md)
    assert md[2] == "| *Realism score image selection* |  |  |  |  |  |  |  |  |"
    assert md[3].startswith("| cGAN |") and md[4].startswith("| HistoGAN |")
    assert md[5] == "| *No image selection* |  |  |  |  |  |  |  |  |"
    # Best per column, found independently: lowest FID/KID, highest precision/recall/F1/density/coverage.
    means = df.groupby(["generator", "filter"])[list(KEYS)].mean()
    line_of = {("cgan", "realism"): 3, ("histogan", "realism"): 4, ("cgan", "none"): 6, ("histogan", "none"): 7}
    for col, (k, scale) in enumerate(zip(KEYS, (1, 1e3, 100, 100, 100, 1, 100, 1), strict=True)):
        best = means[k].idxmin() if k in ("fid", "kid") else means[k].idxmax()
        for pair, i in line_of.items():
            sub = df[(df.generator == pair[0]) & (df["filter"] == pair[1])]
            text = cell(sub[k], scale)
            assert md[i].split(" | ")[col + 1].strip(" |") == (f"**{text}**" if pair == best else text)
    assert sum(line.count("**") for line in md) == 2 * 8  # one best per column
    fid = cell(df[(df.generator == "histogan") & (df["filter"] == "none")].fid, 1)

    tex = out[2].read_text()
    assert r"\multicolumn{9}{l}{\textit{Realism score image selection}} \\" in tex
    assert r"Improved precision (\%) $\uparrow$" in tex and r"KID $\times$10$^3$ $\downarrow$" in tex
    assert r"\textbf{" + fid.replace("±", r"$\pm$") + "}" in tex
    assert tex.count(r"\midrule") == 2 and tex.startswith(r"\begin{tabular}{lcccccccc}")


def test_group_by_generator_and_default_order(tmp_path):
    paths, _ = make_runs(tmp_path)
    out = outputs(tmp_path)
    table = aggregate_quality(paths, *out, group_by="generator")
    assert list(zip(table.generator, table["filter"])) == [("histogan", "none"), ("histogan", "realism"),
                                                           ("cgan", "none"), ("cgan", "realism")]
    md = out[1].read_text().splitlines()
    assert md[2].startswith("| *HistoGAN* |") and md[3].startswith("| No image selection |")


def test_single_subset_has_zero_std(tmp_path):
    d = {"fid": 12.345, "kid": 0.0123, "precision": 0.5, "recall": 0.25, "f1": f1_score(0.5, 0.25), "density": 0.875,
         "coverage": 0.5, "realism": 0.75}
    p = write_json(tmp_path, "histogan", "none", 0, d)
    out = outputs(tmp_path)
    table = aggregate_quality([p], *out)
    assert table.loc[0, "domain_fid_std"] == 0.0 and table.loc[0, "n"] == 1
    md = out[1].read_text()
    assert ("| HistoGAN | 12.35 ± 0.00 | 12.30 ± 0.00 | 50.00 ± 0.00 | 25.00 ± 0.00 | 33.33 ± 0.00 | 0.88 ± 0.00 "
            "| 50.00 ± 0.00 | 0.75 ± 0.00 |") in md
    assert "**" not in md  # a single row has no "best"


def test_inception_columns_present_and_partly_missing(tmp_path):
    paths, df = make_runs(tmp_path, n_subsets=2, inception=True)
    out = outputs(tmp_path)
    aggregate_quality(paths, *out)
    md = out[1].read_text().splitlines()
    assert md[0].endswith("| Inception FID ↓ | Inception KID ×10³ ↓ |")
    hn = df[(df.generator == "histogan") & (df["filter"] == "none")]
    assert md[3].endswith(f"| {cell(hn.inception_fid, 1)} | {cell(hn.inception_kid, 1e3)} |") or \
        md[3].endswith(f"| **{cell(hn.inception_fid, 1)}** | {cell(hn.inception_kid, 1e3)} |")

    # cgan/realism subset 1 without Inception: that row shows "—", the others keep theirs.
    q = json.loads(paths[-1].read_text())
    assert (q["generator"], q["filter"], q["subset"]) == ("cgan", "realism", 1)
    del q["inception"]
    paths[-1].write_text(json.dumps(q))
    table = aggregate_quality(paths, *out)
    assert np.isnan(table.inception_fid_mean.iloc[-1]) and table.inception_fid_mean.iloc[:-1].notna().all()
    md = out[1].read_text().splitlines()
    assert md[-1].endswith("| — | — |") and "| — |" not in md[3]
    assert r"--- & --- \\" in out[2].read_text()


def test_aggregate_errors(tmp_path):
    paths, _ = make_runs(tmp_path, n_subsets=1)
    out = outputs(tmp_path)
    dup = tmp_path / "dup.json"
    dup.write_text(paths[0].read_text())
    with pytest.raises(InputError, match="dup.json.*both hold generator 'histogan', filter 'none', subset '0'"):
        aggregate_quality([*paths, dup], *out)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"generator": "cgan", "filter": "none", "domain": {}}))
    with pytest.raises(InputError, match=r"bad.json: missing key\(s\) \['subset'\]"):
        aggregate_quality([bad], *out)
    bad.write_text(json.dumps({"generator": "cgan", "filter": "none", "subset": 0, "domain": {"fid": 1.0}}))
    with pytest.raises(InputError, match=r"bad.json: 'domain' lacks metric\(s\) \['kid', 'precision'"):
        aggregate_quality([bad], *out)
    bad.write_text("{")
    with pytest.raises(InputError, match="bad.json: not a quality metrics file"):
        aggregate_quality([bad], *out)
    with pytest.raises(InputError, match=r"filter\(s\) \['realism'\] that are not among \['none'\]"):
        aggregate_quality(paths, *out, filters=["none"])
    with pytest.raises(InputError, match="no quality metrics"):
        aggregate_quality([], *out)
    with pytest.raises(InputError, match="group_by"):
        aggregate_quality(paths, *out, group_by="subset")
    assert not any(p.exists() for p in out)


# --- plot_feature_map ---------------------------------------------------------


def is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def plot_inputs(n_real=60, n_sel=30, n_rej=20, dim=12):
    rng = np.random.default_rng(5)
    return rng.normal(size=(n_real, dim)), rng.normal(0.5, 1, (n_sel, dim)), rng.normal(2, 1, (n_rej, dim))


def test_plot_tsne_and_pca(tmp_path):
    # Wide features are reduced by PCA before t-SNE; max_points subsamples each group (40 + 30 + 20).
    real, sel, rej = plot_inputs(n_real=200, dim=80)
    assert plot_feature_map(real, sel, rej, tmp_path / "tsne.png", "histogan, subset 0", max_points=40) == "tsne"
    assert plot_feature_map(real, sel, rej, tmp_path / "pca.png", method="pca") == "pca"
    small = plot_inputs(n_real=10, n_sel=5, n_rej=5)
    assert plot_feature_map(*small, tmp_path / "small.png") == "pca"  # too few points for t-SNE
    for name in ("tsne", "pca", "small"):
        assert is_png(tmp_path / f"{name}.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pca.png", "small.png", "tsne.png"]


@pytest.mark.parametrize("empty", [None, np.empty((0, 12)), []])
def test_plot_with_nothing_rejected(tmp_path, empty):
    real, sel, _ = plot_inputs()
    assert plot_feature_map(real, sel, empty, tmp_path / "m.png", method="pca") == "pca"
    assert is_png(tmp_path / "m.png")


def test_plot_falls_back_to_pca_without_sklearn(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # import raises ImportError
    real, sel, rej = plot_inputs()
    assert plot_feature_map(real, sel, rej, tmp_path / "m.png") == "pca"
    with pytest.raises(InputError, match="scikit-learn"):
        plot_feature_map(real, sel, rej, tmp_path / "m.png", method="tsne")


def test_plot_errors(tmp_path):
    real, sel, rej = plot_inputs()
    p = tmp_path / "m.png"
    with pytest.raises(InputError, match="dimensions differ"):
        plot_feature_map(real, sel[:, :5], rej, p)
    with pytest.raises(InputError, match="needs real features"):
        plot_feature_map(None, sel, rej, p)
    with pytest.raises(InputError, match="t-SNE needs at least"):
        plot_feature_map(real[:5], sel[:5], None, p, method="tsne")
    with pytest.raises(InputError, match="at least 3 points"):
        plot_feature_map(real[:2], None, None, p)
    with pytest.raises(InputError, match="method"):
        plot_feature_map(real, sel, rej, p, method="umap")
    assert not p.exists()


def test_reference_row_ratio_vae_bound_and_convergence_flags(tmp_path):
    """The table checks itself: a real-vs-real row per subset, FID as a multiple of it,
    the VAE bound on latent-diffusion rows, and flags on generators that failed the verdict."""
    rng = np.random.default_rng(1)
    paths, refs, verdicts, vaes, rows = [], [], [], [], []
    for s in range(3):
        ref = {"fid": 20 + rng.random(), "kid": 0.001, "kid_std": 0.0, "precision": 0.8, "recall": 0.85, "f1": 0.82,
               "density": 1.0, "coverage": 0.9, "realism": 1.2}
        (tmp_path / f"ref{s}.json").write_text(json.dumps({"subset": s, "kept": {"domain": ref}, "scoring": {}}))
        refs.append(tmp_path / f"ref{s}.json")
        (tmp_path / f"vae{s}.json").write_text(json.dumps({"subset": s, "domain": {"fid": 25.0 + s}}))
        vaes.append(tmp_path / f"vae{s}.json")
        for gen, fid in (("cgan", 200 + rng.random()), ("ldm_dit", 50 + rng.random())):
            d = {"fid": fid, "kid": 0.01, "precision": 0.5, "recall": 0.4, "f1": f1_score(0.5, 0.4), "density": 0.6,
                 "coverage": 0.5, "realism": 0.9}
            paths.append(write_json(tmp_path, gen, "none", s, d))
            rows.append({"generator": gen, "subset": s, "ratio": fid / ref["fid"], "ref": ref["fid"]})
            v = tmp_path / f"conv_{gen}{s}.json"
            v.write_text(json.dumps({"generator": gen, "subset": s, "converged": gen != "cgan" or s == 0,
                                     "rule": "FID <= 5x the real-vs-real FID and recall >= 10 %"}))
            verdicts.append(v)
    out = outputs(tmp_path)
    table = aggregate_quality(paths, *out, tmp_path / "tables/quality.html", reference_paths=refs,
                              convergence_paths=verdicts, vae_paths=vaes, latent_generators=["ldm_dit"])
    df = pd.DataFrame(rows)
    assert table.generator.tolist() == ["real", "cgan", "ldm_dit"]
    ratio = df[df.generator == "cgan"].ratio
    assert table.loc[1, "domain_fid_ratio_mean"] == pytest.approx(ratio.mean())
    assert table.loc[1, "domain_fid_ratio_std"] == pytest.approx(ratio.std(ddof=1))
    assert table.loc[0, "domain_fid_mean"] == pytest.approx(df.drop_duplicates("subset")["ref"].mean())
    assert table.loc[0, "domain_fid_ratio_mean"] == 1.0
    assert table.loc[2, "vae_fid_mean"] == pytest.approx(26.0) and np.isnan(table.loc[1, "vae_fid_mean"])
    md = out[1].read_text()
    lines = md.splitlines()
    assert lines[0].split(" | ")[1:3] == ["FID ↓", "FID ×real ↓"] and "VAE rec. FID ↓ |" in lines[0]
    assert lines[2].startswith("| *Reference* |") and lines[3].startswith("| Real (validation vs training subset) |")
    assert "**" not in lines[3]  # the reference is not a competitor
    assert "| cGAN ⚠ not converged (2 of 3 subsets) |" in md and "| LDM DiT |" in md
    assert "⚠ not converged: cGAN" in md and "noise, not evidence" in md
    assert "⚠ not converged" in (tmp_path / "tables/quality.html").read_text()


# --- per-class metrics ----------------------------------------------------------


def two_classes(seed, n=150, dim=8):
    """Two well-separated classes; returns (features, labels)."""
    rng = np.random.default_rng(seed)
    y = np.arange(2 * n) % 2
    return rng.normal(size=(2 * n, dim)) + 3.0 * y[:, None], y


def test_per_class_metrics_catch_a_generator_that_swaps_labels(tmp_path):
    """A perfect "generator" (fresh real draws) scores well overall and per class; the same images
    under swapped labels score the same overall and far worse per class."""
    real, real_y = two_classes(0)
    fake, fake_y = two_classes(1)
    kw = {"generator": "cgan", "filter": "none", "subset": 0, "kid_subsets": 10}
    good = write_quality(tmp_path / "good.json", {"domain": (real, fake)}, labels=(real_y, fake_y, ["a", "b"]), **kw)
    swapped = write_quality(tmp_path / "swap.json", {"domain": (real, fake)}, labels=(real_y, 1 - fake_y, ["a", "b"]),
                            **kw)
    for m in ("fid", "kid", "precision", "recall", "density", "coverage", "realism"):
        assert good["domain"][m] == swapped["domain"][m], m  # the same images: overall blind to the labels
    for name in ("a", "b"):
        g, s = good["per_class"][name]["domain"], swapped["per_class"][name]["domain"]
        assert g["n_real"] == g["n_fake"] == 150
        assert s["fid"] > 20 * g["fid"] and g["fid"] < 2.0
        assert g["recall"] > 0.8 and s["recall"] < 0.1 and g["coverage"] > 0.8 and s["coverage"] < 0.1
        assert g["density"] > 0.7 and s["density"] < 0.1 and g["realism"] > 3 * s["realism"]
    assert json.loads((tmp_path / "swap.json").read_text())["per_class"]["b"]["domain"]["fid"] == s["fid"]


def test_per_class_block_of_the_table(tmp_path):
    from histosynth.evaluation.reference import write_reference

    real, real_y = two_classes(0)
    valid, valid_y = two_classes(2, n=60)
    quality = {"k": 3, "kid_subsets": 10, "seed": 0}
    refs = [tmp_path / "ref0.json"]
    write_reference(refs[0], {"domain": real}, {"scoring": {"domain": valid}, "kept": {"domain": valid}},
                    {"scoring": {0: 60, 1: 60}, "kept": {0: 60, 1: 60}}, subset=0, quality=quality,
                    labels=(real_y, {"scoring": valid_y, "kept": valid_y}, ["normal", "tumor"]))
    fake, fake_y = two_classes(3, n=60)
    paths = [tmp_path / "q.json", tmp_path / "q_swap.json"]
    write_quality(paths[0], {"domain": (real, fake)}, generator="histogan", filter="none", subset=0, kid_subsets=10,
                  labels=(real_y, fake_y, ["normal", "tumor"]))
    write_quality(paths[1], {"domain": (real, fake)}, generator="cgan", filter="none", subset=0, kid_subsets=10,
                  labels=(real_y, 1 - fake_y, ["normal", "tumor"]))
    out = outputs(tmp_path)
    table = aggregate_quality(paths, *out, reference_paths=refs)
    assert list(zip(table["class"], table.generator)) == [("", "real"), ("", "histogan"), ("", "cgan"),
                                                          ("normal", "real"), ("normal", "histogan"),
                                                          ("normal", "cgan"), ("tumor", "real"),
                                                          ("tumor", "histogan"), ("tumor", "cgan")]
    ratio = table.set_index(["class", "generator"])["domain_fid_ratio_mean"]
    assert ratio[("", "histogan")] == pytest.approx(ratio[("", "cgan")])  # overall: the same images
    assert ratio[("normal", "cgan")] > 10 * ratio[("normal", "histogan")]  # per class: the swap shows
    assert ratio[("tumor", "real")] == 1.0
    md = out[1].read_text()
    assert "| *Class normal: Reference* |" in md and "| *Class tumor: No image selection* |" in md
    assert md.count("| Real (validation vs training subset) |") == 3 and "Class blocks:" in md
