"""Image quality of synthetic sets (rule `quality`): metrics, their table, a feature map.

Per generator × subset × filter, the selected synthetic images are compared with
the real training subset in one or two feature spaces:

  * ``domain``: the penultimate layer of the classifier trained on the real subset
    (see :mod:`histosynth.evaluation.features`), always;
  * ``inception``: pytorch-fid's InceptionV3 pool3, only when its weights file is
    present.

In each space: FID, KID (mean and std over KID subsets), improved precision and
recall (Kynkäänniemi et al. 2019) and their harmonic mean, the improved F1 of
latent-diffusion-pcam-realism.md eq. 12, and density and coverage (Naeem et al. 2020,
k = 5), which, unlike precision and recall, no outlier can inflate, and the mean realism
score (PCam paper eq. 11; R >= 1 inside a real image's k-NN ball). The same per
conditional class (`per_class` in the JSON, a block of the table): a generator that
draws the right images under the wrong label scores well overall and badly there. :func:`write_quality` writes one JSON per
(generator, filter, subset); :func:`aggregate_quality` turns them into a table laid
out like that paper's Table 1 (mean ± std over subsets, one block of rows per image
selection method, the best value of each column in bold); :func:`plot_feature_map`
draws real, selected and rejected synthetic features in 2-D (t-SNE, or PCA when
t-SNE is unavailable), as HistoGAN's Fig. 10-11.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from histosynth.errors import InputError
from histosynth.evaluation.metrics import (DC_K, density_coverage, f1_score, frechet_distance, kernel_inception_distance,
                                           precision_recall, realism_score)
from histosynth.fileio import atomic_path, write_json, write_text
from histosynth.reporting.tables import FILTER_NAMES, MISSING, best_marks, convergence_note, flag, generator_name, read_convergence, to_html, to_latex, to_markdown

__all__ = [
    "quality_metrics",
    "write_quality",
    "load_quality",
    "summarise_quality",
    "aggregate_quality",
    "plot_feature_map",
]

SPACES = ("domain", "inception")
"""Feature spaces, in table order; ``domain`` is required, ``inception`` optional; the lab's own
encoders (quality.encoders, histosynth.evaluation.spaces) follow under their names."""
NOT_SPACES = ("pixel", "memorisation", "vae", "per_class")  # keys the files use for other things

METRICS = ("fid", "kid", "kid_std", "precision", "recall", "f1", "density", "coverage", "realism")
"""Keys of :func:`quality_metrics`' result (plus n_real, n_fake in the JSON)."""

TABLE_METRICS = ("fid", "kid", "precision", "recall", "f1", "density", "coverage", "realism")
"""Metrics aggregated over subsets (kid_std, the spread over KID subsets, is not)."""

# Table columns: (space, metric) -> (label, scale, higher is better). Precision,
# recall and F1 in percent as in Table 1; KID ×10³ (raw KID rounds to 0.00).
COLUMNS = {
    ("domain", "fid"): ("FID ↓", 1.0, False),
    ("domain", "fid_ratio"): ("FID ×real ↓", 1.0, False),
    ("domain", "kid"): ("KID ×10³ ↓", 1e3, False),
    ("domain", "precision"): ("Improved precision (%) ↑", 100.0, True),
    ("domain", "recall"): ("Improved recall (%) ↑", 100.0, True),
    ("domain", "f1"): ("Improved F1-score (%) ↑", 100.0, True),
    ("domain", "density"): ("Density ↑", 1.0, True),  # ~1 for images drawn like the reals; can exceed 1
    ("domain", "coverage"): ("Coverage (%) ↑", 100.0, True),
    ("domain", "realism"): ("Mean realism ↑", 1.0, True),
    ("memorisation", "copies"): ("Copies (%) ↓", 100.0, False),  # histosynth.evaluation.memorisation's rule
    ("inception", "fid"): ("Inception FID ↓", 1.0, False),
    ("inception", "kid"): ("Inception KID ×10³ ↓", 1e3, False),
    ("vae", "fid"): ("VAE rec. FID ↓", 1.0, False),
}
REFERENCE = "real"
"""The generator key of the reference row (real validation vs real training subset)."""
REFERENCE_NAME = "Real (validation vs training subset)"


# ---------------------------------------------------------------------------
# Metrics


def _feature_array(name: str, x) -> np.ndarray:
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} is not a numeric array ({e})") from e
    if x.ndim != 2 or x.shape[1] == 0:
        raise InputError(f"{name} must be an (N, D) array with D >= 1, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return x


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def quality_metrics(real_features, fake_features, *, k: int = 3, kid_subsets: int = 100,
                    kid_subset_size: int = 1000, seed: int = 0) -> dict[str, float]:
    """FID, KID, improved precision/recall and F1, density and coverage of fake vs real features (one
    feature space).

    Returns floats keyed fid, kid, kid_std (spread over the `kid_subsets` KID
    subsets of min(kid_subset_size, n_real, n_fake) samples), precision, recall, f1
    (k-th neighbour balls, k = `k`), density, coverage (k = DC_K, Naeem et al.'s 5), realism (the
    mean realism score, k = `k`; an exact copy of a real image scores inf, and so does the mean).
    Both sets need at least k + 1 samples (k-th neighbour balls; >= 2 for FID/KID)
    and the same dimension D; the real set DC_K + 1 for density and coverage.
    """
    real = _feature_array("real_features", real_features)
    fake = _feature_array("fake_features", fake_features)
    if real.shape[1] != fake.shape[1]:
        raise InputError(f"real and fake features differ in dimension: {real.shape[1]} vs {fake.shape[1]} "
                         "(were they extracted with the same network?)")
    k = _positive_int("k (nearest neighbours)", k)
    kid_subsets = _positive_int("kid_subsets", kid_subsets)
    kid_subset_size = _positive_int("kid_subset_size", kid_subset_size)
    needed = max(2, k + 1)
    for name, x in (("real_features", real), ("fake_features", fake)):
        if len(x) < needed:
            raise InputError(f"{name} has {len(x)} samples; quality metrics need at least {needed} "
                             f"(k + 1 = {k + 1} for precision/recall, 2 for FID/KID)")
    from histosynth.evaluation.features import gaussian_stats  # here: features imports torch, which the table and plot don't need

    fid = frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))
    kid, kid_std = kernel_inception_distance(real, fake, n_subsets=kid_subsets,
                                             subset_size=kid_subset_size, seed=seed)
    precision, recall = precision_recall(real, fake, k)
    density, coverage = density_coverage(real, fake, min(DC_K, len(real) - 1))
    return {"fid": float(fid), "kid": float(kid), "kid_std": float(kid_std), "precision": float(precision),
            "recall": float(recall), "f1": f1_score(precision, recall), "density": float(density),
            "coverage": float(coverage), "realism": float(realism_score(real, fake, k).mean())}


def class_quality(real, real_labels, fake, fake_labels, class_names, **kwargs) -> dict[str, dict]:
    """{class name: quality_metrics of the fakes labelled that class vs the reals of that class}.

    `kwargs` go to quality_metrics. A class with too few images on either side is an error
    naming it (a conditional generator must draw every class it is asked for)."""
    real_labels, fake_labels = np.asarray(real_labels).ravel(), np.asarray(fake_labels).ravel()
    for name, x, y in (("real", real, real_labels), ("fake", fake, fake_labels)):
        if len(x) != len(y):
            raise InputError(f"{len(x)} {name} features but {len(y)} {name} labels")
    out = {}
    for c, name in enumerate(class_names):
        r, f = np.asarray(real)[real_labels == c], np.asarray(fake)[fake_labels == c]
        try:
            out[str(name)] = {**quality_metrics(r, f, **kwargs), "n_real": len(r), "n_fake": len(f)}
        except InputError as e:
            raise InputError(f"class '{name}': {e}") from e
    return out


def write_quality(path, spaces: Mapping[str, tuple | None], *, generator: str, filter: str,  # noqa: A002
                  subset, k: int = 3, kid_subsets: int = 100, kid_subset_size: int = 1000,
                  seed: int = 0, labels: tuple | None = None, memorisation: Mapping | None = None) -> dict:
    """Compute :func:`quality_metrics` per feature space and write them as one JSON (atomically).

    `spaces` maps "domain" (required) and optionally "inception" to a
    (real_features, fake_features) pair; a None value means "not computed" (e.g.
    no Inception weights). The JSON holds generator, filter, subset, the settings,
    and per space the metrics plus n_real and n_fake. With `labels` = (real_labels,
    fake_labels, class_names) also `per_class`: {class name: {space: the same}};
    `memorisation` (histosynth.evaluation.memorisation.summary) is stored as it is.
    Returns the written dict.
    """
    if not isinstance(spaces, Mapping):
        raise InputError(f"spaces must map a feature space to (real, fake) features, got {type(spaces).__name__}")
    unknown = [s for s in spaces if s in NOT_SPACES or not re.fullmatch(r"[a-z][a-z0-9_]*", str(s))]
    if unknown:
        raise InputError(f"unknown feature space(s) {unknown}; expected some of {list(SPACES)} or an encoder's name "
                         "(quality.encoders)")
    if spaces.get("domain") is None:
        raise InputError("quality metrics need the 'domain' features (real, fake)")
    for name, value in (("generator", generator), ("filter", filter)):
        if not isinstance(value, str) or not value:
            raise InputError(f"{name} must be a non-empty string, got {value!r}")
    if isinstance(subset, bool) or not isinstance(subset, (int, np.integer, str)):
        raise InputError(f"subset must be an integer or a string, got {subset!r}")
    result = {"generator": generator, "filter": filter,
              "subset": int(subset) if isinstance(subset, np.integer) else subset,
              "k": k, "kid_subsets": kid_subsets, "kid_subset_size": kid_subset_size, "seed": seed}
    for space in [*SPACES, *(s for s in spaces if s not in SPACES)]:
        pair = spaces.get(space)
        if pair is None:
            continue
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InputError(f"spaces['{space}'] must be a (real_features, fake_features) pair")
        real, fake = pair
        try:
            metrics = quality_metrics(real, fake, k=k, kid_subsets=kid_subsets,
                                      kid_subset_size=kid_subset_size, seed=seed)
        except InputError as e:
            raise InputError(f"{space} features: {e}") from e
        result[space] = {**metrics, "n_real": len(real), "n_fake": len(fake)}
    if labels is not None:
        real_labels, fake_labels, class_names = labels
        per_space = {space: class_quality(real, real_labels, fake, fake_labels, class_names, k=k,
                                          kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed)
                     for space, (real, fake) in ((s, p) for s, p in spaces.items() if p is not None)}
        result["per_class"] = {str(name): {space: per_space[space][str(name)] for space in per_space}
                               for name in class_names}
    if memorisation is not None:
        result["memorisation"] = dict(memorisation)
    write_json(path, result)
    return result


# ---------------------------------------------------------------------------
# Table


def _metric_columns(block, path, space: str) -> dict[str, float]:
    """{<space>_<metric>: value} of one space's block of a quality (or reference) JSON; NaN when absent."""
    if block is None:
        return {f"{space}_{m}": math.nan for m in TABLE_METRICS}
    if not isinstance(block, dict):
        raise InputError(f"{path}: '{space}' must be an object of metrics")
    absent = [m for m in TABLE_METRICS if m not in block]
    if absent:
        raise InputError(f"{path}: '{space}' lacks metric(s) {absent}")
    out = {}
    for m in TABLE_METRICS:
        value = block[m]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{path}: '{space}.{m}' must be a number, got {value!r}")
        out[f"{space}_{m}"] = float(value)
    return out


def _spaces_in(block: dict) -> list[str]:
    """domain, inception, then any encoder space a JSON block holds metrics of."""
    extra = [k for k, v in block.items() if isinstance(v, dict) and "fid" in v and k not in SPACES]
    return [*SPACES, *extra]


def _class_rows(head: dict, q: dict, path) -> list[dict]:
    """The overall row (class "") of a JSON with metrics per space, then one row per class of its `per_class`;
    the memorisation audit's copy rate (`memorisation_copies`, NaN without one) in both."""
    copies = q.get("memorisation") or {}
    rows = [{**head, "class": "", **{k: v for space in _spaces_in(q)
                                     for k, v in _metric_columns(q.get(space), path, space).items()},
             "memorisation_copies": float(copies.get("copy_rate", math.nan))}]
    per_class = q.get("per_class") or {}
    if not isinstance(per_class, dict):
        raise InputError(f"{path}: 'per_class' must map class names to metrics")
    for name, blocks in per_class.items():
        if not isinstance(blocks, dict):
            raise InputError(f"{path}: per_class '{name}' must be an object of feature spaces")
        rows.append({**head, "class": str(name),
                     **{k: v for space in _spaces_in(blocks)
                        for k, v in _metric_columns(blocks.get(space), path, space).items()},
                     "memorisation_copies": float(copies.get("per_class", {}).get(str(name), math.nan))})
    return rows


def load_quality(json_paths) -> pd.DataFrame:
    """Rows of generator, filter, subset (str), class ("" overall, else a class name) and `<space>_<metric>` floats.

    Inception metrics are NaN where a file has none. Duplicate (generator, filter,
    subset) files, missing keys and non-numeric values raise InputError naming the file.
    """
    rows, seen = [], {}
    for path in json_paths:
        try:
            with open(path) as f:
                q = json.load(f)
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: not a quality metrics file ({e!r})") from e
        if not isinstance(q, dict):
            raise InputError(f"{path}: not a quality metrics file (a JSON object was expected)")
        missing = [key for key in ("generator", "filter", "subset", "domain") if q.get(key) is None]
        if missing:
            raise InputError(f"{path}: missing key(s) {missing} in quality metrics file")
        head = {"generator": str(q["generator"]), "filter": str(q["filter"]), "subset": str(q["subset"])}
        key = tuple(head.values())
        if key in seen:
            raise InputError(f"{path} and {seen[key]} both hold generator '{key[0]}', filter '{key[1]}', "
                             f"subset '{key[2]}'")
        seen[key] = path
        rows += _class_rows(head, q, path)
    if not rows:
        raise InputError("no quality metrics to aggregate")
    return pd.DataFrame(rows)


def _order(present: pd.Series, given, what: str) -> list[str]:
    present = list(dict.fromkeys(present))
    if given is None:
        return present
    given = list(dict.fromkeys(map(str, given)))
    unknown = [v for v in present if v not in given]
    if unknown:
        raise InputError(f"quality files hold {what}(s) {unknown} that are not among {given}")
    return given


def summarise_quality(runs: pd.DataFrame, *, generators=None, filters=None,
                      group_by: str = "filter") -> pd.DataFrame:
    """Mean and sample std (ddof=1) over subsets per (generator, filter), in table order.

    group_by="filter" (Table 1): the filters' blocks in `filters` order, generators
    in `generators` order within each; group_by="generator" the other way round.
    A single subset has no spread: its std is 0, as in :mod:`histosynth.reporting.aggregate`.
    A (generator, filter) whose subsets do not all have Inception metrics gets NaN
    for them (a mean over some subsets only would not be comparable).
    """
    if group_by not in ("filter", "generator"):
        raise InputError(f"group_by must be 'filter' or 'generator', got {group_by!r}")
    gens = _order(runs["generator"], generators, "generator")
    filts = _order(runs["filter"], filters, "filter")
    pairs = ([(g, f) for f in filts for g in gens] if group_by == "filter"
             else [(g, f) for g in gens for f in filts])
    rows = []
    for gen, filt in pairs:
        sub = runs[(runs["generator"] == gen) & (runs["filter"] == filt)]
        if sub.empty:
            continue
        rows.append({"generator": gen, "filter": filt, **_mean_std(sub)})
    return pd.DataFrame(rows)


def _mean_std(sub: pd.DataFrame) -> dict:
    """n, subsets, and <column>_mean / _std of every metric column over the rows (subsets)."""
    out = {"n": len(sub), "subsets": ",".join(sub["subset"])}
    for col in sub.columns:
        if col in ("generator", "filter", "subset"):
            continue
        values = sub[col]
        if values.isna().any():
            mean = std = math.nan
        else:
            mean = float(values.mean())
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[f"{col}_mean"], out[f"{col}_std"] = mean, std
    return out


def _column(space: str, metric: str) -> tuple[str, float, bool]:
    """(label, scale, higher is better) of a table column; an encoder's FID and KID by its name."""
    if (space, metric) in COLUMNS:
        return COLUMNS[(space, metric)]
    return {"fid": (f"FD {space} ↓", 1.0, False), "kid": (f"KID {space} ×10³ ↓", 1e3, False)}[metric]


def _shown_columns(table: pd.DataFrame) -> list[tuple[str, str]]:
    """The (space, metric) columns any row of `table` has (Inception, VAE and encoders only when present;
    an encoder shows its FID and KID, after Inception's; every metric of it is in the TSV)."""
    known = {space for space, _ in COLUMNS} | {"memorisation"}
    encoders = sorted({c[: -len("_fid_mean")] for c in table.columns
                       if c.endswith("_fid_mean") and c[: -len("_fid_mean")] not in known})
    candidates = list(COLUMNS)
    at = candidates.index(("inception", "kid")) + 1
    candidates[at:at] = [(e, m) for e in encoders for m in ("fid", "kid")]
    return [c for c in candidates if f"{c[0]}_{c[1]}_mean" in table and table[f"{c[0]}_{c[1]}_mean"].notna().any()]


def _items(table: pd.DataFrame, group_by: str, convergence=None, shown=None,
           prefix: str = "") -> tuple[list[str], list[tuple]]:
    """Column labels and table items (see histosynth.reporting.tables): the reference row first when
    present, then a section per filter (or generator) block, a row per (generator, filter).

    Inception and VAE columns are shown when any row has them ("—" where missing), or the
    `shown` ones. The best value among the synthetic rows is judged on the displayed
    (rounded) mean, so ties are all marked; the reference row is never marked. Flagged
    generators' rows say so. `prefix` opens every section title (a class block).
    """
    shown = _shown_columns(table) if shown is None else shown
    synthetic = (table["generator"] != REFERENCE).to_numpy()
    labels, columns = [], []
    for space, metric in shown:
        label, scale, higher = _column(space, metric)
        nan = pd.Series(math.nan, index=table.index)
        means, stds = table.get(f"{space}_{metric}_mean", nan), table.get(f"{space}_{metric}_std", nan)
        marks = iter(best_marks([round(scale * a, 2) for a in means[synthetic]], higher))
        columns.append([(MISSING if math.isnan(a) else f"{scale * a:.2f} ± {scale * s:.2f}",
                         bool(next(marks)) if syn else False) for a, s, syn in zip(means, stds, synthetic)])
        labels.append(label)
    rows = list(zip(*columns))
    inner = "generator" if group_by == "filter" else "filter"
    gen_name = lambda g: flag(generator_name(g), (convergence or {}).get(g))  # noqa: E731
    outer_name = (lambda f: FILTER_NAMES.get(f, f)) if group_by == "filter" else gen_name
    inner_name = gen_name if group_by == "filter" else (lambda f: FILTER_NAMES.get(f, f))
    items, current = [], None
    for i, (outer, name) in enumerate(zip(table[group_by], table[inner])):
        if not synthetic[i]:
            items += [("section", prefix + "Reference"), ("row", REFERENCE_NAME, list(rows[i]))]
            continue
        if outer != current:
            current = outer
            items.append(("section", prefix + outer_name(outer)))
        items.append(("row", inner_name(name), list(rows[i])))
    return labels, items


def load_reference(paths) -> pd.DataFrame:
    """Rows per subset (and class, "" overall): the `kept` design of reference.json as `<space>_<metric>`
    (histosynth.evaluation.reference)."""
    rows = []
    for path in paths:
        try:
            with open(path) as f:
                ref = json.load(f)
            head = {"generator": REFERENCE, "filter": "", "subset": str(ref["subset"])}
            rows += _class_rows(head, ref["kept"], path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}: not a reference file written by reference_quality ({e!r})") from e
    return pd.DataFrame(rows)


def load_vae_fid(paths) -> dict[str, float]:
    """subset -> FID of the VAE's reconstructions (vae/subset<k>/quality.json)."""
    out = {}
    for path in paths:
        try:
            with open(path) as f:
                q = json.load(f)
            out[str(q["subset"])] = float(q["domain"]["fid"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}: not a VAE quality file written by vae_quality ({e!r})") from e
    return out


def aggregate_quality(json_paths, out_tsv, out_md, out_tex, out_html=None, *,
                      generators: Sequence[str] | None = None, filters: Sequence[str] | None = None,
                      group_by: str = "filter", title: str = "Model", reference_paths=(), convergence_paths=(),
                      vae_paths=(), latent_generators: Sequence[str] = ()) -> pd.DataFrame:
    """Quality JSONs -> tables (TSV with every number; Markdown, LaTeX and HTML like Table 1).

    Rows: one per (generator, filter), ordered as `generators` and `filters` (first
    appearance when None; a file naming one not listed is an error), grouped in
    blocks per filter (group_by="filter", as in Table 1) or per generator. Cells:
    mean ± std over subsets; FID as is, KID ×10³, precision/recall/F1 in percent;
    the best value per column in bold. Quality files with `per_class` metrics add a block
    per class after the overall rows (the same columns, each class's own reference row).
    Returns the summary table (column `class`: "" for the overall rows).

    With `reference_paths` (reference.json per subset) the table opens with the
    real-vs-real row and every row gets "FID ×real": its FID over its own subset's
    reference FID. `convergence_paths` flag the rows of generators whose selected
    snapshot failed the verdict; `vae_paths` (vae/subset<k>/quality.json) give the
    `latent_generators`' rows the VAE reconstruction FID that bounds them.
    """
    runs = load_quality(json_paths)
    reference = load_reference(reference_paths) if reference_paths else None
    if reference is not None:
        ref_fid = {(s, c): fid for s, c, fid in zip(reference["subset"], reference["class"], reference["domain_fid"])}
        missing = sorted(set(runs["subset"]) - {s for s, _ in ref_fid})
        if missing:
            raise InputError(f"quality files of subset(s) {missing} have no reference file")
        # Per class, over that class's own real-vs-real FID (NaN where the reference has no such class).
        runs["domain_fid_ratio"] = runs["domain_fid"] / [ref_fid.get(key, math.nan)
                                                         for key in zip(runs["subset"], runs["class"])]
        reference["domain_fid_ratio"] = 1.0
    if vae_paths:
        vae = load_vae_fid(vae_paths)
        latent = runs["generator"].isin(list(latent_generators)) & (runs["class"] == "")
        runs["vae_fid"] = np.where(latent, runs["subset"].map(vae).astype(float), math.nan)
    tables = []
    for name in dict.fromkeys(["", *runs["class"]]):  # overall first, then the classes in file order
        part = summarise_quality(runs[runs["class"] == name].drop(columns="class"), generators=generators,
                                 filters=filters, group_by=group_by)
        if reference is not None and (reference["class"] == name).any():
            ref = reference[reference["class"] == name].drop(columns="class")
            part = pd.concat([pd.DataFrame([{"generator": REFERENCE, "filter": "", **_mean_std(ref)}]), part],
                             ignore_index=True)
        tables.append(part.assign(**{"class": name}))
    table = pd.concat(tables, ignore_index=True)
    convergence = read_convergence(convergence_paths)
    shown = _shown_columns(tables[0])
    labels, items = _items(tables[0], group_by, convergence, shown)
    for part in tables[1:]:
        items += _items(part, group_by, convergence, shown, prefix=f"Class {part['class'].iloc[0]}: ")[1]
    note = " ".join(filter(None, [
        "FID ×real: FID over the real-vs-real FID of the same subset (its validation images, drawn r·N_i per "
        "class, against the training subset): 1 is as close as unseen real tissue." if reference is not None else "",
        "VAE rec. FID: the VAE's reconstructions of those validation images, which no latent-diffusion model "
        "decoded by it can beat." if vae_paths else "",
        "Class blocks: the images a generator drew for that label against the real images of that class (and "
        "FID ×real against that class's real-vs-real FID)." if len(tables) > 1 else "",
        convergence_note(convergence)]))
    write_text(out_tsv, table.to_csv(sep="\t", float_format="%.6f", index=False))
    md = to_markdown(title, labels, items, note)
    write_text(out_md, md)
    write_text(out_tex, to_latex(title, labels, items, note))
    if out_html:
        write_text(out_html, to_html(title, labels, items, note))
    print(md)
    return table


# ---------------------------------------------------------------------------
# Feature map

TSNE_MIN_POINTS = 50
"""Fewer points than this: PCA (t-SNE needs perplexity < n and says little on a handful)."""
TSNE_PERPLEXITY = 30.0
TSNE_PCA_DIMS = 50
"""Features are reduced to this many principal components before t-SNE (the usual recipe)."""

_GROUPS = (("real", "0.55", "o", 8, 0.5), ("rejected synthetic", "C3", "x", 14, 0.7),
           ("selected synthetic", "C0", "^", 14, 0.7))


def _pca(x: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """Principal-component scores (sign fixed: largest loading positive) and explained-variance ratios."""
    centred = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    n = min(n_components, len(s))
    signs = np.sign(vt[np.arange(n), np.abs(vt[:n]).argmax(axis=1)])
    signs[signs == 0] = 1.0
    scores = u[:, :n] * s[:n] * signs
    var = s ** 2
    ratio = var[:n] / var.sum() if var.sum() > 0 else np.zeros(n)
    if n < n_components:  # fewer points or dimensions than components: pad with zeros
        scores = np.hstack([scores, np.zeros((len(x), n_components - n))])
        ratio = np.concatenate([ratio, np.zeros(n_components - n)])
    return scores, ratio


def _subsample(x: np.ndarray, max_points: int, seed: int, stream: int) -> np.ndarray:
    """At most max_points rows, drawn without replacement, kept in their original order."""
    if len(x) <= max_points:
        return x
    rng = np.random.default_rng([seed, stream])
    return x[np.sort(rng.choice(len(x), max_points, replace=False))]


def _plot_group(name: str, x) -> np.ndarray | None:
    """(N, D) float64 features; None for an empty group (None, [] or shape (0, ...))."""
    if x is None:
        return None
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} features are not a numeric array ({e})") from e
    if x.size == 0:
        return None
    return _feature_array(f"{name} features", x)


def plot_feature_map(real_features, selected_features, rejected_features, path, title: str = "", *,
                     seed: int = 0, max_points: int = 2000, method: str = "auto") -> str:
    """2-D map of real vs selected vs rejected synthetic features, saved as PNG (atomically).

    Each group is subsampled to `max_points` (seeded, deterministic). method
    "auto" uses t-SNE (scikit-learn; PCA init, perplexity min(30, (n - 1) / 3),
    seeded, after PCA to 50 dimensions) when it is installed and there are at
    least TSNE_MIN_POINTS points, else PCA; "tsne" or "pca" force one. Selected
    or rejected may be empty (None or zero rows): a filter may reject nothing.
    Returns the method used ("tsne" or "pca"); the legend says it too.
    """
    if method not in ("auto", "tsne", "pca"):
        raise InputError(f"method must be 'auto', 'tsne' or 'pca', got {method!r}")
    max_points = _positive_int("max_points", max_points)
    groups = {name: _plot_group(name, x) for name, x in
              (("real", real_features), ("selected synthetic", selected_features),
               ("rejected synthetic", rejected_features))}
    if groups["real"] is None:
        raise InputError("the feature map needs real features; got none")
    dims = {name: x.shape[1] for name, x in groups.items() if x is not None}
    if len(set(dims.values())) > 1:
        raise InputError(f"feature dimensions differ between groups: {dims}")
    totals = {name: 0 if x is None else len(x) for name, x in groups.items()}
    shown = {name: None if x is None else _subsample(x, max_points, seed, i)
             for i, (name, x) in enumerate(groups.items())}
    parts = [x for x in shown.values() if x is not None]
    points = np.vstack(parts)
    n, d = points.shape
    if n < 3 or d < 2:
        raise InputError(f"the feature map needs at least 3 points of dimension >= 2, got {n} of dimension {d}")

    tsne = None
    if method in ("auto", "tsne"):
        try:
            from sklearn.manifold import TSNE as tsne  # noqa: N813
        except ImportError:
            if method == "tsne":
                raise InputError("t-SNE needs scikit-learn, which is not installed; use method='pca'") from None
        if n < TSNE_MIN_POINTS:
            if method == "tsne":
                raise InputError(f"t-SNE needs at least {TSNE_MIN_POINTS} points, got {n}; use method='pca'")
            tsne = None
    if tsne is not None:
        used = "tsne"
        reduced = _pca(points, TSNE_PCA_DIMS)[0] if d > TSNE_PCA_DIMS else points
        perplexity = min(TSNE_PERPLEXITY, (n - 1) / 3)
        coords = tsne(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                      random_state=seed).fit_transform(reduced)
        legend_title = f"t-SNE (perplexity {perplexity:.0f})"
        axis_labels = ("t-SNE 1", "t-SNE 2")
    else:
        used = "pca"
        coords, ratio = _pca(points, 2)
        legend_title = "PCA"
        axis_labels = tuple(f"PC {i + 1} ({100 * r:.0f}% of variance)" for i, r in enumerate(ratio))

    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state

    fig = Figure(figsize=(6.4, 5.6))
    ax = fig.subplots()
    offsets, start = {}, 0
    for name, x in shown.items():
        count = 0 if x is None else len(x)
        offsets[name] = (start, start + count)
        start += count
    handles = {}
    for name, colour, marker, size, alpha in _GROUPS:  # drawn real, rejected, then selected on top
        lo, hi = offsets[name]
        total = totals[name]
        label = f"{name} ({total:,})" if hi - lo == total else f"{name} ({hi - lo:,} of {total:,})"
        handles[name] = ax.scatter(coords[lo:hi, 0], coords[lo:hi, 1], c=colour, marker=marker, s=size,
                                   alpha=alpha, linewidths=0.8 if marker == "x" else 0, label=label)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    if used == "tsne":  # t-SNE axes have no units
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title(title)
    ax.legend(handles=[handles[g] for g in groups], title=legend_title, frameon=False, fontsize=8, title_fontsize=8, markerscale=1.5)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return used


def measure_kept(selected_path, pool_path, pool_features_path, train, subset_path, reference_path, metrics_path,
                 plot_path,
                 memorisation_path, pairs_path, *, real, generator: str, filter: str,  # noqa: A002
                 subset: int, quality: Mapping, batch_size: int, device: str, max_points: int) -> dict:
    """Quality of a filter's kept images against the real subset (`subset_path`, indices into the `train`
    store) in every feature space of `real` (spaces.RealFeatures), overall and per class; their
    memorisation audit against the copy thresholds of `reference_path` (every kept image's nearest
    training image, `memorisation_path`; the closest pairs, `pairs_path`); and the real / kept /
    rejected feature map (domain). Domain features of pool images come from `pool_features_path`
    (rule pool_features); only images a threshold filter drew beyond the pool are extracted here."""
    from histosynth.data.split import read_subset
    from histosynth.data.store import read_extra, read_store, store_info
    from histosynth.evaluation import memorisation as mem
    from histosynth.evaluation.features import extract_features, load_pool_features
    from histosynth.torch_utils import sampling_device

    device = sampling_device(device)
    selected, selected_labels, _ = read_store(selected_path)
    train_images, real_labels, _ = read_store(train, read_subset(subset_path))  # the stored real features' order
    pool, _, _ = read_store(pool_path)
    keep = read_extra(selected_path, "pool_index")
    rejected = np.setdiff1d(np.arange(len(pool)), keep)  # images drawn beyond the pool were never rejected
    class_names = store_info(train).class_names
    spaces = real.spaces(len(class_names))
    pool_features = load_pool_features(pool_features_path, len(pool))
    in_pool = keep < len(pool)
    kept_domain = np.empty((len(selected), pool_features.shape[1]))
    kept_domain[in_pool] = pool_features[keep[in_pool]]
    if not in_pool.all():  # drawn beyond the pool by a threshold filter
        kept_domain[~in_pool] = extract_features(spaces["domain"][0], selected[~in_pool], batch_size, device)
    features = {space: (stats["features"], kept_domain if space == "domain"
                        else extract_features(extractor, selected, batch_size, device))
                for space, (extractor, stats) in spaces.items()}
    thresholds = mem.read_thresholds(reference_path)
    copies, _ = mem.measure(selected, features["domain"][1], selected_labels, class_names,
                            mem.training_spaces(train_images, features["domain"][0]), thresholds, memorisation_path)
    mem.plot_closest_pairs(selected, train_images, copies["closest"], pairs_path,
                           f"{generator}, subset {subset}, filter {filter}: {copies['n_copies']} of {copies['n']} "
                           f"kept images flagged")
    result = write_quality(metrics_path, features, generator=generator, filter=filter, subset=subset,
                           k=quality["k"], kid_subsets=quality["kid_subsets"], seed=quality["seed"],
                           labels=(real_labels, selected_labels, class_names), memorisation=copies)
    rejected_features = pool_features[rejected] if len(rejected) else None
    plot_feature_map(*features["domain"], rejected_features, plot_path,
                     f"{generator}, subset {subset}, filter {filter}", seed=quality["seed"], max_points=max_points)
    return result
