"""Synthetic-image filters: selection rules on hand-built scores, and the MC-dropout ResNet."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from histosynth.classification.classifier import Classifier, build_classifier
from histosynth.errors import InputError
from histosynth.evaluation.filters import MCDropoutResNet, class_centroids, confidence_select, histogan_select, load_mc_dropout_model, mc_dropout_scores, normalise_channels, per_class_realism, realism_select, select_first


def counts(labels, idx):
    return dict(zip(*np.unique(np.asarray(labels)[idx], return_counts=True)))


# ----------------------------------------------------------------------------- none


def test_select_first_takes_the_first_of_each_class_in_pool_order():
    labels = np.array([1, 0, 1, 0, 0, 1, 0])
    idx = select_first(labels, {0: 2, 1: 1})
    assert idx.tolist() == [0, 1, 3] and idx.dtype == np.int64
    assert select_first(labels, [2, 1]).tolist() == [0, 1, 3]  # a sequence indexed by class
    assert select_first(labels, {0: 0, 1: 3}).tolist() == [0, 2, 5]
    assert select_first(labels, {0: 4, 1: 3}).tolist() == list(range(7))


@pytest.mark.parametrize("labels, targets, match", [
    ([0, 0, 1], {0: 3, 1: 1}, r"class 0: the pool has 2 images but 3"),
    ([0, 0, 0], {0: 1, 1: 1}, r"class 1: the pool has no images"),
    ([0, 1, 2], {0: 1, 1: 1}, r"classes \[2\] that target_counts"),
    ([0, 1], {0: -1, 1: 1}, r"class 0 must be an integer >= 0"),
    ([0, 1], {0: 1.5, 1: 1}, r"class 0 must be an integer >= 0"),
    ([[0, 1]], {0: 1, 1: 1}, r"1-D"),
    ([0.0, 1.0], {0: 1, 1: 1}, r"integers"),
])
def test_select_first_errors(labels, targets, match):
    with pytest.raises(InputError, match=match):
        select_first(np.array(labels), targets)


# ----------------------------------------------------------------------------- HistoGAN


def test_histogan_select_keeps_lower_entropy_half_then_closer_half():
    # Class 0 at even indices, class 1 at odd ones; 8 each, target 2 (pool = 4 x target).
    labels = np.tile([0, 1], 8)
    entropy = np.zeros(16)
    distance = np.zeros(16)
    c0, c1 = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    # Class 0: the certain half is c0[4:] (entropy 0.1..0.4); among them c0[5] and c0[7] are closest.
    entropy[c0] = [0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.4]
    distance[c0] = [0.0, 0.0, 0.0, 0.0, 5.0, 1.0, 6.0, 2.0]  # uncertain images are closest: still dropped
    # Class 1: certain half c1[:4]; closest two of them c1[0], c1[3].
    entropy[c1] = [0.1, 0.1, 0.1, 0.1, 0.5, 0.5, 0.5, 0.5]
    distance[c1] = [0.5, 3.0, 4.0, 0.7, 0.1, 0.1, 0.1, 0.1]
    idx = histogan_select(labels, entropy, distance, {0: 2, 1: 2})
    assert idx.tolist() == sorted([c0[5], c0[7], c1[0], c1[3]])
    assert counts(labels, idx) == {0: 2, 1: 2}


def test_histogan_select_matches_algorithm_1_median_rule():
    rng = np.random.default_rng(0)
    for target in (1, 3, 5):
        labels = rng.permutation(np.repeat([0, 1, 2], 4 * target))
        entropy, distance = rng.random(len(labels)), rng.random(len(labels))
        expected = []
        for c in range(3):  # Algorithm 1 literally: e < Median(E^c), then d < Median(D^c) of the survivors
            x0 = np.flatnonzero(labels == c)
            x1 = x0[entropy[x0] < np.median(entropy[x0])]
            expected += x1[distance[x1] < np.median(distance[x1])].tolist()
        idx = histogan_select(labels, entropy, distance, [target] * 3)
        assert idx.tolist() == sorted(expected)
        assert counts(labels, idx) == {0: target, 1: target, 2: target}


def test_histogan_select_larger_pool_takes_the_closest_survivors_and_ties_go_to_pool_order():
    labels = np.zeros(12, np.int64)  # target 2: halvings leave 3, the 2 closest of them are kept
    entropy = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1], float)
    distance = np.array([3, 1, 2, 9, 9, 9, 0, 0, 0, 0, 0, 0], float)
    # Entropy half: 0..5; distance half of those (3 of 6): 1, 2, 0 -> best two: 1, 2.
    assert histogan_select(labels, entropy, distance, {0: 2}).tolist() == [1, 2]
    # All scores tied: the first half of the first half in pool order.
    assert histogan_select(labels, np.zeros(12), np.zeros(12), {0: 3}).tolist() == [0, 1, 2]


def test_histogan_select_errors():
    labels = np.array([0] * 7 + [1] * 8)
    e = d = np.zeros(15)
    with pytest.raises(InputError, match=r"class 0: the pool has 7 images but 8 are needed to select 2.*4 x"):
        histogan_select(labels, e, d, {0: 2, 1: 2})
    with pytest.raises(InputError, match=r"class 2: the pool has no images"):
        histogan_select(labels, e, d, {0: 1, 1: 1, 2: 1})
    with pytest.raises(InputError, match=r"entropy has shape \(14,\) but there are 15 labels"):
        histogan_select(labels, np.zeros(14), d, {0: 1, 1: 1})
    bad = np.zeros(15)
    bad[[3, 9]] = np.nan
    with pytest.raises(InputError, match=r"distance has 2 non-finite value\(s\), first at pool indices \[3, 9\]"):
        histogan_select(labels, e, bad, {0: 1, 1: 1})
    # A class with a target of 0 needs no pool at all.
    assert histogan_select(labels[7:], e[7:], d[7:], {0: 0, 1: 2}).tolist() == [0, 1]


# ----------------------------------------------------------------------------- realism / confidence


def test_realism_select_threshold_is_inclusive_and_keeps_pool_order():
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    realism = np.array([0.5, 1.0, 9.0, np.inf, 0.99, 2.0, 0.1])
    idx, short = realism_select(labels, realism, {0: 2, 1: 1})
    assert idx.tolist() == [1, 2, 5]  # first passing in pool order, not the highest R (index 3)
    assert short == {0: 0, 1: 0}
    idx, short = realism_select(labels, realism, {0: 4, 1: 2})
    assert idx.tolist() == [1, 2, 3, 5] and short == {0: 1, 1: 1}
    idx, short = realism_select(labels, realism, {0: 1, 1: 1}, threshold=3.0)
    assert idx.tolist() == [2] and short == {0: 0, 1: 1}


def test_realism_select_errors():
    labels = np.array([0, 0, 1])
    with pytest.raises(InputError, match=r"realism has 1 NaN value\(s\), first at pool indices \[1\]"):
        realism_select(labels, [1.0, np.nan, 1.0], {0: 1, 1: 1})
    with pytest.raises(InputError, match=r"realism has shape \(2,\) but there are 3 labels"):
        realism_select(labels, [1.0, 1.0], {0: 1, 1: 1})
    with pytest.raises(InputError, match=r"class 1: the pool has 1 images but 2 are needed"):
        realism_select(labels, [1.0, 1.0, 1.0], {0: 1, 1: 2})
    with pytest.raises(InputError, match=r"class 2: the pool has no images"):
        realism_select(labels, [1.0, 1.0, 1.0], {0: 1, 1: 1, 2: 1})


def test_confidence_select_uses_the_conditional_label_and_a_strict_threshold():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[0.6, 0.4],     # exactly lambda: rejected (strictly greater)
                      [0.1, 0.9],     # confident, but in the other class: rejected
                      [0.61, 0.39],
                      [0.3, 0.7],
                      [0.9, 0.1],
                      [0.2, 0.8]])
    idx, short = confidence_select(labels, probs, {0: 1, 1: 2})
    assert idx.tolist() == [2, 3, 5] and short == {0: 0, 1: 0}
    idx, short = confidence_select(labels, probs, {0: 3, 1: 1})
    assert idx.tolist() == [2, 3] and short == {0: 2, 1: 0}
    own = probs[np.arange(6), labels]  # (N,) probabilities at the own label give the same answer
    assert confidence_select(labels, own, {0: 3, 1: 1})[0].tolist() == [2, 3]
    assert confidence_select(labels, probs, {0: 3, 1: 3}, threshold=0.05)[0].tolist() == list(range(6))


def test_confidence_select_errors():
    labels = np.array([0, 1, 2])
    with pytest.raises(InputError, match=r"labels range over \[0, 2\] but probs has 2 class columns"):
        confidence_select(labels, np.full((3, 2), 0.5), {0: 1, 1: 1, 2: 1})
    with pytest.raises(InputError, match=r"probs has 2 rows but there are 3 labels"):
        confidence_select(labels, np.full((2, 3), 0.5), {0: 1, 1: 1, 2: 1})
    with pytest.raises(InputError, match=r"probs has 1 non-finite"):
        confidence_select(labels, np.array([0.7, np.nan, 0.7]), {0: 1, 1: 1, 2: 1})


def test_per_class_realism_scores_each_class_against_its_own_real_images():
    real = np.array([[0.0], [2.0], [10.0], [12.0]])
    real_labels = np.array([0, 0, 1, 1])
    fake = np.array([[11.0], [1.0], [3.0], [13.0]])
    fake_labels = np.array([1, 0, 0, 1])

    def offset_from_mean(real_features, fake_features, scale=1.0):
        return scale * (fake_features[:, 0] - real_features[:, 0].mean())

    scores = per_class_realism(real, real_labels, fake, fake_labels, offset_from_mean, scale=2.0)
    assert scores.tolist() == [0.0, 0.0, 4.0, 4.0]  # class 1 mean 11, class 0 mean 1
    with pytest.raises(InputError, match=r"class 2: synthetic images but no real images"):
        per_class_realism(real, real_labels, fake, np.array([1, 0, 2, 1]), offset_from_mean)
    with pytest.raises(InputError, match=r"4 fake feature rows but 3 fake labels"):
        per_class_realism(real, real_labels, fake, np.array([1, 0, 0]), offset_from_mean)


# ----------------------------------------------------------------------------- MC-dropout ResNet


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    clf = build_classifier("resnet18", 3)
    with torch.no_grad():  # non-default BatchNorm statistics, as a trained model has
        clf.train()
        clf(torch.rand(8, 3, 32, 32))
    return clf.eval()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)


def as_tensor(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def block_outputs(classifier, x):
    """Raw activation after every residual block, through hooks on the plain classifier."""
    net, out = classifier.backbone, []
    hooks = [b.register_forward_hook(lambda m, i, o: out.append(o))
             for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]
    with torch.no_grad():
        logits = classifier(x)
    for h in hooks:
        h.remove()
    return logits, out


def test_mc_mode_dropout_active_only_before_the_last_block_and_bn_frozen(classifier, images):
    model = MCDropoutResNet(classifier, p=0.5)
    assert model.mc and model.dropout.training
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    x = as_tensor(images[:4])
    with torch.no_grad():
        p1, f1 = model(x)
        p2, f2 = model(x)
    assert not torch.allclose(p1, p2)  # two passes with the same input differ
    assert len(f1) == 8  # resnet18: 2 + 2 + 2 + 2 BasicBlocks
    for a, b in zip(f1[:-1], f2[:-1]):
        assert torch.equal(a, b)  # blocks before the dropout do not see it
    assert not torch.equal(f1[-1], f2[-1])
    after = classifier.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats and counters unchanged
    model.train()  # train() stays MC mode: BN still in eval
    assert model.mc and not any(m.training for m in bns)


def test_eval_mode_is_deterministic_and_equals_the_classifier(classifier, images):
    model = MCDropoutResNet(classifier).eval()
    assert not model.mc
    x = as_tensor(images[:4])
    with torch.no_grad():
        p1, f1 = model(x, normalise=False)
        p2, _ = model(x)
    assert torch.equal(p1, p2)
    logits, raw = block_outputs(classifier, x)
    assert torch.allclose(p1, F.softmax(logits, 1), atol=1e-6)
    for a, b in zip(f1, raw):
        assert torch.allclose(a, b, atol=1e-6)
    # p = 0 in MC mode is deterministic too.
    zero = MCDropoutResNet(classifier, p=0.0)
    with torch.no_grad():
        assert torch.equal(zero(x)[0], zero(x)[0])


def test_block_features_are_unit_normalised_over_channels(classifier, images):
    model = MCDropoutResNet(classifier)
    with torch.no_grad():
        _, feats = model(as_tensor(images[:3]))
    shapes = [tuple(f.shape[1:]) for f in feats]
    assert shapes == [(64, 8, 8)] * 2 + [(128, 4, 4)] * 2 + [(256, 2, 2)] * 2 + [(512, 1, 1)] * 2
    for f in feats:
        assert torch.allclose(f.norm(dim=1), torch.ones(f.shape[0], *f.shape[2:]), atol=1e-5)


def test_scores_follow_eqs_6_and_7_without_dropout(classifier, images):
    """p = 0: entropy is the classifier's, distance is eq. 6 on hooked activations, centroids eq. 7."""
    model = MCDropoutResNet(classifier, p=0.0)
    real, real_labels = images[:5], np.array([0, 1, 1, 2, 2])
    cents = class_centroids(model, real, real_labels, batch_size=2)
    _, raw_real = block_outputs(classifier, as_tensor(real))
    for l, f in enumerate(raw_real):  # eq. 7: mean raw activation of each class
        assert np.allclose(cents[1][l], f[1:3].mean(0).numpy(), atol=1e-5)
        assert np.allclose(cents[0][l], f[0].numpy(), atol=1e-5)
    fake, fake_labels = images[[0, 5, 6, 7]], np.array([0, 0, 1, 2])
    ent, dist = mc_dropout_scores(model, fake, fake_labels, cents, passes=3, batch_size=3)
    logits, raw_fake = block_outputs(classifier, as_tensor(fake))
    p = F.softmax(logits.double(), 1)
    assert np.allclose(ent, -(p * p.log()).sum(1).numpy(), atol=1e-6)
    expected = np.zeros(4)
    for l, f in enumerate(raw_fake):
        c = torch.from_numpy(np.stack([cents[int(y)][l] for y in fake_labels]))
        diff = normalise_channels(f) - normalise_channels(c)
        expected += (diff ** 2).sum((1, 2, 3)).numpy() / (f.shape[2] * f.shape[3])
    assert np.allclose(dist, expected, atol=1e-5)
    assert dist[0] < 1e-6 < dist[1:].min()  # a real image is at distance 0 from its own centroid
    # Deterministic model: the batch size does not matter.
    ent2, dist2 = mc_dropout_scores(model, fake, fake_labels, cents, passes=1, batch_size=4)
    assert np.allclose(ent, ent2) and np.allclose(dist, dist2)


def test_mc_dropout_scores_are_seeded(classifier, images):
    model = MCDropoutResNet(classifier, p=0.5)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    cents = class_centroids(model, images, labels, batch_size=4, seed=1)
    assert np.allclose(class_centroids(model, images, labels, batch_size=4, seed=1)[2][-1], cents[2][-1])
    rng_state = torch.get_rng_state()
    a = mc_dropout_scores(model, images, labels, cents, passes=2, batch_size=4, seed=7)
    b = mc_dropout_scores(model, images, labels, cents, passes=2, batch_size=4, seed=7)
    c = mc_dropout_scores(model, images, labels, cents, passes=2, batch_size=4, seed=8)
    assert torch.equal(rng_state, torch.get_rng_state())  # the global RNG is not consumed
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.allclose(a[0], c[0]) and not np.allclose(a[1], c[1])
    assert a[0].shape == a[1].shape == (10,) and (a[0] >= 0).all() and (a[1] >= 0).all()
    assert model.mc  # mode restored
    # The selection on top: 10 images, classes of 4/3/3 -> target 1 for class 0 only.
    idx = histogan_select(labels, *a, {0: 1, 1: 0, 2: 0})
    assert len(idx) == 1 and labels[idx[0]] == 0


def test_mc_dropout_errors(classifier, images, tmp_path):
    with pytest.raises(InputError, match=r"torchvision ResNet"):
        MCDropoutResNet(Classifier(nn.Flatten()))
    with pytest.raises(InputError, match=r"dropout rate"):
        MCDropoutResNet(classifier, p=1.0)
    model = MCDropoutResNet(classifier)
    cents = class_centroids(model, images[:2], np.array([0, 1]))
    with pytest.raises(InputError, match=r"no real-image centroid for classes \[2\]"):
        mc_dropout_scores(model, images[:3], np.array([0, 1, 2]), cents)
    big = np.zeros((2, 64, 64, 3), np.uint8)
    with pytest.raises(InputError, match=r"same size"):
        mc_dropout_scores(model, big, np.array([0, 1]), cents)
    with pytest.raises(InputError, match=r"uint8"):
        mc_dropout_scores(model, images[:2].astype(np.float32), np.array([0, 1]), cents)
    torch.save(classifier.state_dict(), tmp_path / "model.pt")
    assert isinstance(load_mc_dropout_model(tmp_path / "model.pt", "resnet18", 3), MCDropoutResNet)
    with pytest.raises(InputError, match=r"not a resnet18 classifier state dict with 2 classes"):
        load_mc_dropout_model(tmp_path / "model.pt", "resnet18", 2)
