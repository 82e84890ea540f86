"""Strategy `unified`: the ViT-cGAN critic's class head as a classifier (Algorithm 1),
its checkpoint choice (FID and validation, §IV-B) and its row in the tables; named
generator variants (the Table II ablation)."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from histosynth.checkpoint import load_checkpoint
from histosynth.classification.unified import choose_epoch, evaluate_unified
from histosynth.config_schema import train_config
from histosynth.data.store import write_store
from histosynth.errors import InputError
from histosynth.evaluation.selection import select_checkpoint
from histosynth.generative.families import family_module
from histosynth.generative.models.vitgan import class_probabilities
from histosynth.generative.training import train_gan
from histosynth.generators import resolve_generators
from histosynth.reporting.aggregate import aggregate_classification, load_runs, paired_comparison, summarise
from histosynth.reporting.tables import generator_name
from test_gan_training import VITGAN_TINY, data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A ViT-cGAN trained as the pipeline trains it: each snapshot scored as it is written, its
    class head on the validation and test images too."""
    from test_generate import mean_colour_scorer

    tmp = tmp_path_factory.mktemp("unified")
    x, y = data(n=16)
    rng = np.random.default_rng(1)
    stores = {}
    for split in ("valid", "test"):
        images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
        write_store(tmp / f"{split}.h5", images, np.tile([0, 1], 6), ["normal", "tumor"])
        stores[split] = (images, np.tile([0, 1], 6))
    train_gan(x, y, 2, tmp / "checkpoints", tmp / "losses.tsv",
              train_config(family="vitgan", model=VITGAN_TINY, epochs=4, batch_size=8, save_from=0, device="cpu"),
              scorer=lambda device: mean_colour_scorer(x, critic_data=stores, batch_size=5),
              scores_path=tmp / "checkpoint_scores.tsv")
    return tmp


def test_test_metrics_come_from_the_chosen_snapshots_class_head(trained, tmp_path):
    m = evaluate_unified(trained / "checkpoint_scores.tsv", trained / "valid.h5", trained / "test.h5",
                         tmp_path / "metrics.json", tmp_path / "curve.tsv", generator="vitgan",
                         subset="subsets/subset0.npy", model={}, seed=0, criterion="fid")
    scores = pd.read_csv(trained / "checkpoint_scores.tsv", sep="\t")
    best, _ = select_checkpoint(scores, "fid", 0.5)
    assert m["best_epoch"] == best and m["strategy"] == "unified" and m["filter"] is None
    assert m["components"] == {"class_projection": True, "selective": True}
    assert (m["n_valid"], m["n_test"], m["class_names"]) == (12, 12, ["normal", "tumor"])
    # Independent reference: scikit-learn on the kept snapshot's class head's softmax.
    from histosynth.data.store import read_store

    x, y, _ = read_store(trained / "test.h5")
    critic = family_module("vitgan").critic_from_state(load_checkpoint(trained / f"checkpoints/epoch_{best:05d}.pt"))
    p = class_probabilities(critic, x)[:, 1]
    assert m["test"]["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    assert m["test"]["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5), abs=1e-6)
    assert json.loads((tmp_path / "metrics.json").read_text())["test"] == pytest.approx(m["test"])
    curve = pd.read_csv(tmp_path / "curve.tsv", sep="\t")
    assert list(curve.epoch) == [1, 2, 3, 4] and {"fid_ema", "valid_auc", "valid_accuracy"} <= set(curve)
    # Every scored snapshot's class head, on validation, whether or not its file was kept.
    xv, yv, _ = read_store(trained / "valid.h5")
    pv = class_probabilities(critic, xv)[:, 1]
    assert curve.loc[curve.epoch == best, "valid_auc"].item() == pytest.approx(roc_auc_score(yv, pv), abs=1e-6)
    # The validation choice may fall on a snapshot training did not keep: it reads the scores only.
    evaluate_unified(trained / "checkpoint_scores.tsv", trained / "valid.h5", trained / "test.h5",
                     tmp_path / "v.json", tmp_path / "v.tsv", generator="vitgan", subset="s", model={},
                     criterion="validation")
    # The file is a classifier metrics file to `aggregate`.
    assert load_runs([tmp_path / "metrics.json"]).iloc[0][["strategy", "generator", "filter"]].tolist() == [
        "unified", "vitgan", ""]


def test_a_score_table_without_the_critic_is_a_clear_error(tmp_path, trained):
    pd.DataFrame({"epoch": [1, 2], "fid": [2.0, 1.0]}).to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match="no critic_valid_.*vitgan"):
        evaluate_unified(tmp_path / "s.tsv", trained / "valid.h5", trained / "test.h5", tmp_path / "m.json",
                         tmp_path / "c.tsv", generator="histogan", subset="s", model={})
    assert not (tmp_path / "m.json").exists()


CURVE = pd.DataFrame({"epoch": [10, 20, 30, 40], "fid_ema": [30.0, 20.0, 25.0, 21.0],
                      "valid_auc": [0.70, 0.60, 0.90, 0.80]})


@pytest.mark.parametrize("criterion,epoch", [
    ("fid", 20),                 # lowest smoothed FID
    ("validation", 30),          # best validation AUC
    # rank sums: 10 -> 4+3, 20 -> 1+4, 30 -> 3+1, 40 -> 2+2: tie of 30 and 40 at 4, 30 has the better AUC
    ("fid_and_validation", 30),
])
def test_checkpoint_criteria(criterion, epoch):
    assert choose_epoch(CURVE, "fid", criterion) == epoch


def test_rank_sum_tie_on_auc_goes_to_the_earlier_epoch_and_nan_auc_never_wins():
    curve = pd.DataFrame({"epoch": [1, 2, 3], "fid_ema": [2.0, 1.0, 0.5], "valid_auc": [0.8, 0.8, np.nan]})
    assert choose_epoch(curve, "fid", "validation") == 1
    with pytest.raises(InputError, match="criterion 'best'"):
        choose_epoch(curve, "fid", "best")


def _metrics(path, strategy, subset, seed, auc, generator=None, filter=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    test = {"accuracy": auc, "auc": auc, "sensitivity": auc, "specificity": auc}
    path.write_text(json.dumps({"strategy": strategy, "subset": subset, "seed": seed, "test": test,
                                "generator": generator, "filter": filter}))
    return path


def test_unified_rows_close_the_table_and_pair_with_the_per_subset_mean(tmp_path):
    paths = []
    for k in range(3):
        for seed in range(2):
            paths.append(_metrics(tmp_path / f"t{k}{seed}.json", "traditional", f"s{k}", seed, 0.6 + 0.1 * k + 0.02 * seed))
            paths.append(_metrics(tmp_path / f"a{k}{seed}.json", "augment", f"s{k}", seed, 0.7, "vitgan", "none"))
        paths.append(_metrics(tmp_path / f"u{k}.json", "unified", f"s{k}", 0, 0.75 + 0.05 * k, "vitgan"))
        paths.append(_metrics(tmp_path / f"c{k}.json", "unified", f"s{k}", 0, 0.8, "vitgan_cp"))
    runs = load_runs(paths)
    table = summarise(runs)
    assert table[["strategy", "generator"]].values.tolist()[-2:] == [["unified", "vitgan"], ["unified", "vitgan_cp"]]
    paired = paired_comparison(runs)
    row = paired[paired.generator == "vitgan_cp"].iloc[0]
    # Reference per subset: mean over seeds of traditional = 0.61, 0.71, 0.81.
    ref = np.array([0.61, 0.71, 0.81])
    assert row["n_pairs"] == 3 and row["auc_diff"] == pytest.approx(np.mean(0.8 - ref))
    from scipy.stats import ttest_rel

    u = paired[(paired.strategy == "unified") & (paired.generator == "vitgan")].iloc[0]
    assert u["auc_p"] == pytest.approx(ttest_rel([0.75, 0.80, 0.85], ref).pvalue)
    out = {ext: tmp_path / f"table.{ext}" for ext in ("tsv", "md", "tex", "html")}
    aggregate_classification(paths, out["tsv"], out["md"], out["tex"], out["html"], tmp_path / "runs.tsv")
    md = out["md"].read_text()
    assert "Unified model" in md and md.index("Unified model") > md.index("No image selection")
    assert "ViT-cGAN CP class head" in md and "mean over that subset's seeds" in md


def test_unified_metrics_with_a_filter_are_rejected(tmp_path):
    bad = _metrics(tmp_path / "u.json", "unified", "s0", 0, 0.7, "vitgan", "none")
    with pytest.raises(InputError, match="'unified' takes no filter"):
        load_runs([bad])


FAMILY_SCHEMA = {"type": "object", "additionalProperties": False,
                 "properties": {"epochs": {"type": "integer", "minimum": 1}, "model": {"type": "object"},
                                "device": {"enum": ["auto", "cpu", "cuda"]}}}


def test_a_variant_merges_over_its_family_and_is_validated():
    sections = {"vitgan": {"epochs": 500, "device": "auto", "model": {"z_dim": 256, "selective": True}},
                "vitgan_cp": {"family": "vitgan", "model": {"selective": False}}}
    out = resolve_generators(["vitgan", "vitgan_cp"], sections, {"vitgan": FAMILY_SCHEMA})
    assert out["vitgan_cp"] == {"family": "vitgan", "epochs": 500, "device": "auto",
                                "model": {"z_dim": 256, "selective": False}}
    assert out["vitgan"]["family"] == "vitgan" and sections["vitgan"]["model"]["selective"] is True
    with pytest.raises(InputError, match="generator.vitgan_cp.epochs: 0 is less than the minimum"):
        resolve_generators(["vitgan_cp"], {**sections, "vitgan_cp": {"family": "vitgan", "epochs": 0}},
                           {"vitgan": FAMILY_SCHEMA})
    with pytest.raises(InputError, match="'mystery' is not a generator family"):
        resolve_generators(["mystery"], sections, {"vitgan": FAMILY_SCHEMA})


def test_variant_display_names():
    assert generator_name("vitgan") == "ViT-cGAN"
    assert generator_name("vitgan_cp_sa") == "ViT-cGAN CP+SA"
    assert generator_name("ldm_dit_big") == "LDM DiT BIG"
    assert generator_name("mine") == "mine"
