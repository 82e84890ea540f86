"""Memorisation audit: copies of training images are flagged, novel images are not."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist

from histosynth.errors import InputError
from histosynth.evaluation import memorisation as mem


def textures(n, seed, size=32):
    """Smooth random colour textures, uint8 NHWC: every image different, all from one distribution."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, size // 4, size // 4, generator=g), size=(size, size), mode="bilinear")
    return (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def domain_features(images):
    """A stand-in for the domain extractor, which is trained with flips, turns and colour jitter: a fixed
    random projection of the standardised pixels, averaged over the 8 flips and turns."""
    w = np.random.default_rng(0).normal(size=(images[0].size, 64))
    out = 0
    for flipped in (images, images[:, :, ::-1]):
        for k in range(4):
            x = np.rot90(flipped, k, axes=(1, 2)).reshape(len(images), -1).astype(np.float64)
            x = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)
            out = out + x @ w / 8
    return out


def spaces(images):
    return mem.image_spaces(images, domain_features(images))


def training(images):
    return mem.training_spaces(images, domain_features(images))


def test_exact_and_perturbed_copies_are_flagged_exactly():
    train, valid, novel = textures(120, 0), textures(400, 1), textures(30, 2)
    rng = np.random.default_rng(3)
    exact = train[:5]
    # Slightly perturbed: pixel noise of 3 grey levels and a brightness / contrast change; then turned copies.
    perturbed = np.clip(train[5:10] * 0.9 + 12 + rng.normal(0, 3, train[5:10].shape), 0, 255).astype(np.uint8)
    turned = np.ascontiguousarray(np.rot90(train[10:13, :, ::-1], 1, axes=(1, 2)))
    pool = np.concatenate([exact, perturbed, turned, novel])
    thresholds = mem.copy_thresholds(spaces(valid), training(train))
    result = mem.audit(spaces(pool), training(train), thresholds)
    # Every copy flagged, nothing else.
    assert np.flatnonzero(result["copy"]).tolist() == list(range(13))
    assert result["pixel_index"][:13].tolist() == list(range(13))  # and traced to its training image
    assert result["domain_index"][:13].tolist() == list(range(13))
    assert (result["pixel_distance"][:5] < 1e-5).all()  # 0 up to the round-off of |a|² + |b|² - 2ab
    # Unseen real images: in both spaces at once, rarely as near as the nearest 1 % in one.
    fresh = mem.audit(spaces(textures(400, 4)), training(train), thresholds)["copy"].mean()
    assert fresh < 0.01

    labels = np.array([0] * 13 + [1] * 30)
    s = mem.summary(result, labels, ["normal", "tumor"], thresholds, n_closest=10)
    assert s["n"] == 43 and s["n_copies"] == 13 and s["copy_rate"] == 13 / 43
    assert s["per_class"] == {"normal": 1.0, "tumor": 0.0}
    assert sorted(c["synthetic"] for c in s["closest"][:8]) == [0, 1, 2, 3, 4, 10, 11, 12]  # exact / turned first
    assert all(c["copy"] and c["train"] == c["synthetic"] for c in s["closest"])  # each traced to its source


def test_nearest_and_pixel_space_against_references():
    rng = np.random.default_rng(5)
    q, r = rng.normal(size=(37, 6)), rng.normal(size=(53, 6))
    index, distance = mem.nearest(q, r, block_size=8)
    full = cdist(q, r)
    assert index.tolist() == full.argmin(axis=1).tolist()
    np.testing.assert_allclose(distance, full.min(axis=1), rtol=1e-9)
    images = textures(4, 6)
    x = mem.pixel_space(images)
    assert x.shape == (4, 16 * 16 * 3)
    np.testing.assert_allclose(x.mean(axis=1), 0, atol=1e-9)
    np.testing.assert_allclose(x.std(axis=1), 1, atol=1e-4)
    # Brightness and contrast do not move an image in pixel space.
    brighter = np.clip(images.astype(np.float64) * 0.5 + 40, 0, 255).round().astype(np.uint8)
    assert np.abs(mem.pixel_space(brighter) - x).max() < 0.05
    assert not np.isnan(mem.pixel_space(np.full((1, 32, 32, 3), 7, np.uint8))).any()  # a flat image


def test_bad_input():
    with pytest.raises(InputError, match="uint8"):
        mem.pixel_space(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(InputError, match="same D"):
        mem.nearest(np.zeros((2, 3)), np.zeros((2, 4)))


def test_a_reference_without_thresholds_is_a_clear_error(tmp_path):
    old = tmp_path / "reference.json"
    old.write_text('{"subset": 0, "kept": {}}')  # written before the audit existed
    with pytest.raises(InputError, match="reference.json: no memorisation thresholds.*rerun reference_quality"):
        mem.read_thresholds(old)
    old.write_text('{"memorisation": {"thresholds": {"domain": 1.5, "pixel": 2}}}')
    assert mem.read_thresholds(old) == {"domain": 1.5, "pixel": 2.0}
