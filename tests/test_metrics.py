"""classification_metrics against scikit-learn, the independent reference."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, recall_score, roc_auc_score

from histosynth.classification.metrics import classification_metrics


def sklearn_binary(y, p):
    pred = (p >= 0.5).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {"accuracy": accuracy_score(y, pred), "auc": roc_auc_score(y, p),
            "sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp)}


@pytest.mark.parametrize("seed", range(5))
def test_binary_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.3 * y + rng.random(500) * 0.7, 0, 1)
    p[:50] = np.round(p[:50], 1)  # ties, and exact 0.5 values on the threshold
    ours, ref = classification_metrics(y, p), sklearn_binary(y, p)
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], abs=1e-12), k


def test_binary_threshold_is_inclusive_at_half():
    m = classification_metrics([1, 0], [0.5, 0.4999])
    assert m["sensitivity"] == 1.0 and m["specificity"] == 1.0


def test_binary_accepts_column_vector_and_reports_nan_auc_for_one_class():
    m = classification_metrics(np.ones(4), np.full((4, 1), 0.9))
    assert m["accuracy"] == 1.0 and np.isnan(m["auc"]) and np.isnan(m["specificity"])


@pytest.mark.parametrize("seed", range(3))
def test_multiclass_macro_ovr_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, c = 600, 5
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = p.argmax(1)
    cm = confusion_matrix(y, pred, labels=range(c))
    spec = [(cm.sum() - cm[i].sum() - cm[:, i].sum() + cm[i, i]) / (cm.sum() - cm[i].sum()) for i in range(c)]
    ours = classification_metrics(y, p)
    assert ours["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert ours["auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert ours["sensitivity"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert ours["specificity"] == pytest.approx(np.mean(spec))


def test_bad_shapes_and_labels_raise():
    with pytest.raises(ValueError, match="rows"):
        classification_metrics([0, 1, 1], [0.2, 0.8])
    with pytest.raises(ValueError, match="binary"):
        classification_metrics([0, 2], [0.2, 0.8])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        classification_metrics([0, 2], np.full((2, 2), 0.5))
