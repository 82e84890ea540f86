"""EMA checkpoint selection on hand-made curves."""

import json

import numpy as np
import pandas as pd
import pytest

from histosynth.errors import InputError
from histosynth.evaluation.selection import ALPHAS, kept_epochs, plot_curve, select_checkpoint, selectable, write_selection


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
    # A lab encoder's Fréchet distance, too (fd_<name>).
    pd.DataFrame({"epoch": [1, 2], "fid": [1.0, 2.0], "fd_uni": [3.0, 2.0]}).to_csv(scores, sep="\t", index=False)
    assert write_selection(scores, *out, metric="fd_uni", alpha=0.0) == 2
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


def test_training_keeps_every_snapshot_any_metric_and_alpha_selects_at_any_moment():
    """Simulate training's retention (histosynth.generative.training) on noisy GAN-like curves: the
    snapshots kept after each epoch are kept_epochs of the scores so far (and the previous epoch's).
    Whatever epoch a metric and alpha of the schema's values select from the finished run must
    then still be on disk, and the disk never holds more than metrics x alphas + 2."""
    rng = np.random.default_rng(0)
    for trial in range(8):
        n = 120
        trend = 300 * np.exp(-np.arange(n) / rng.uniform(10, 60)) + 50
        scores = pd.DataFrame({"epoch": np.arange(101, 101 + n), "fid": trend * rng.lognormal(0, 0.15, n),
                               "kid": trend / 1e3 * rng.lognormal(0, 0.3, n), "precision": rng.random(n),
                               "kid_std": rng.random(n)})
        kept, on_disk, most = set(), set(), 0
        for t in range(1, n + 1):
            previous, kept = kept, kept_epochs(scores.iloc[:t])
            on_disk.add(int(scores.epoch[t - 1]))
            most = max(most, len(on_disk))
            on_disk &= kept | previous
        on_disk &= kept
        final = {select_checkpoint(scores, m, a)[0] for m in ("fid", "kid") for a in ALPHAS}
        assert final <= on_disk and on_disk == kept, trial
        assert most <= 2 * len(ALPHAS) + 2


def test_selectable_metrics_and_alphas_match_the_schema():
    from histosynth.config_schema import load_schema

    assert selectable(["epoch", "fid", "kid", "kid_std", "precision", "fid_inception", "kid_inception_std",
                       "fd_uni", "kid_uni", "recall_uni", "critic_valid_auc"]) == ["fid", "kid", "fid_inception",
                                                                                     "fd_uni", "kid_uni"]
    assert tuple(load_schema()["properties"]["selection"]["properties"]["alpha"]["enum"]) == ALPHAS


def test_an_alpha_off_the_kept_grid_is_a_config_error():
    import jsonschema

    from histosynth.config_schema import load_schema

    node = load_schema()["properties"]["selection"]["properties"]["alpha"]
    jsonschema.validate(0.3, node)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(0.55, node)


def test_a_selection_of_a_snapshot_training_did_not_keep_is_a_clear_error(tmp_path):
    scores = tmp_path / "scores.tsv"
    pd.DataFrame({"epoch": [1, 2, 3], "fid": [10.0, 30.0, 20.0]}).to_csv(scores, sep="\t", index=False)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints/epoch_00003.pt").write_bytes(b"")
    out = [tmp_path / n for n in ("curve.tsv", "choice.json")]
    with pytest.raises(InputError, match=r"selects epoch 1, whose snapshot training did not keep.*epochs \[3\]"):
        write_selection(scores, *out, alpha=0.0, snapshots=tmp_path / "checkpoints")
    assert not out[1].exists()
