"""Aggregation maths against pandas computed independently, and table formats."""

import json

import numpy as np
import pandas as pd
import pytest

from histosynth.aggregate import aggregate_classification


def write_runs(tmp_path):
    rng = np.random.default_rng(0)
    paths, rows = [], []
    for strategy in ("baseline", "traditional"):
        for subset in range(3):
            for seed in range(2):
                m = dict(zip(["accuracy", "auc", "sensitivity", "specificity"], rng.random(4)))
                p = tmp_path / f"{strategy}_{subset}_{seed}.json"
                p.write_text(json.dumps({"strategy": strategy, "subset": f"subset{subset}", "seed": seed,
                                         "test": m}))
                paths.append(p)
                rows.append({"strategy": strategy, **m})
    return paths, pd.DataFrame(rows)


def test_mean_and_sample_std_per_strategy(tmp_path):
    paths, df = write_runs(tmp_path)
    out = [tmp_path / f"t.{e}" for e in ("tsv", "md", "tex")]
    aggregate_classification(paths, *out, strategies=["traditional", "baseline"])
    table = pd.read_csv(out[0], sep="\t", index_col="strategy")
    assert list(table.index) == ["traditional", "baseline"]
    for s in ("baseline", "traditional"):
        sub = df[df.strategy == s]
        assert table.loc[s, "n"] == 6
        for m in ("accuracy", "auc", "sensitivity", "specificity"):
            assert table.loc[s, f"{m}_mean"] == pytest.approx(sub[m].mean(), abs=1e-6)
            assert table.loc[s, f"{m}_std"] == pytest.approx(np.std(sub[m], ddof=1), abs=1e-6)
    md = out[1].read_text()
    acc = df[df.strategy == "baseline"].accuracy
    assert f"| Baseline | {100 * acc.mean():.2f} ± {100 * acc.std():.2f} |" in md
    tex = out[2].read_text()
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and "AUC (\\%)" in tex


def test_bad_metrics_file_is_named(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text("{")
    with pytest.raises(ValueError, match="broken.json"):
        aggregate_classification([p], *(tmp_path / f"t.{e}" for e in ("tsv", "md", "tex")))
