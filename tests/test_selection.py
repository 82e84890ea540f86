"""EMA checkpoint selection on hand-made curves."""

import json

import pandas as pd
import pytest

from histosynth.errors import InputError
from histosynth.evaluation.selection import plot_curve, select_checkpoint, write_selection


def test_smoothing_skips_a_lucky_outlier():
    # Epoch 103 is a single good outlier; 108-110 are consistently good.
    fid = [60, 55, 20, 58, 50, 40, 33, 28, 25, 24, 24.5]
    scores = pd.DataFrame({"epoch": range(101, 112), "fid": fid})
    best_raw, _ = select_checkpoint(scores, alpha=0.0)
    best, curve = select_checkpoint(scores, alpha=0.5)
    assert best_raw == 103 and best == 111
    assert curve["fid_ema"].iloc[1] == pytest.approx(0.5 * 60 + 0.5 * 55)


def test_ties_go_to_the_earliest_epoch():
    best, _ = select_checkpoint(pd.DataFrame({"epoch": [5, 6, 7], "fid": [3.0, 1.0, 1.0]}), alpha=0.0)
    assert best == 6


def test_write_selection_outputs(tmp_path):
    scores = tmp_path / "scores.tsv"
    pd.DataFrame({"epoch": [3, 1, 2], "fid": [10.0, 30.0, 20.0], "kid": [0.1, 0.3, 0.2]}).to_csv(
        scores, sep="\t", index=False)
    out = [tmp_path / n for n in ("curve.tsv", "choice.json")]
    assert write_selection(scores, *out, alpha=0.5) == 3
    choice = json.loads(out[1].read_text())
    assert choice["epoch"] == 3 and choice["alpha"] == 0.5 and choice["fid_ema"] == pytest.approx(17.5)
    assert choice["kid"] == pytest.approx(0.1)  # every scored metric at the chosen epoch
    curve = pd.read_csv(out[0], sep="\t")
    assert curve.epoch.tolist() == [1, 2, 3] and list(curve.columns) == ["epoch", "fid", "kid", "fid_ema"]
    reference = {"domain": {"fid": 12.0, "kid": 0.05, "recall": 0.8}}
    plot_curve(curve.assign(recall=[0.1, 0.2, 0.3]), "fid", 0.5, 3, tmp_path / "curve.png", "t", reference=reference)
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_select_on_kid_instead_of_fid(tmp_path):
    scores = tmp_path / "scores.tsv"
    pd.DataFrame({"epoch": [1, 2, 3], "fid": [10.0, 30.0, 20.0], "kid": [0.3, 0.1, 0.2]}).to_csv(
        scores, sep="\t", index=False)
    out = [tmp_path / n for n in ("curve.tsv", "choice.json")]
    assert write_selection(scores, *out, metric="kid", alpha=0.0) == 2
    assert json.loads(out[1].read_text())["metric"] == "kid"
    with pytest.raises(InputError, match="fid_inception"):
        write_selection(scores, *out, metric="fid_inception")


@pytest.mark.parametrize("table,match", [
    ({"epoch": [1, 2]}, "missing column 'fid'"),
    ({"epoch": [1, 1], "fid": [1.0, 2.0]}, "scored twice"),
    ({"epoch": [1, 2], "fid": [1.0, float("nan")]}, "non-finite"),
])
def test_bad_score_tables(tmp_path, table, match):
    path = tmp_path / "scores.tsv"
    pd.DataFrame(table).to_csv(path, sep="\t", index=False)
    with pytest.raises(InputError, match=match):
        write_selection(path, *(tmp_path / n for n in ("c.tsv", "c.json")))
    assert not (tmp_path / "c.json").exists()
