"""Batched augmentation against torchvision's per-image functional ops as the reference."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from histosynth.data.augment import AugmentConfig, adjust_brightness_, adjust_contrast_, adjust_hue_, adjust_saturation_, augment_batch, draw, flip_rotate

OFF = AugmentConfig(hflip=False, vflip=False, rot90=False, brightness=0, contrast=0, saturation=0, hue=0)


def images(n=8, size=12, seed=0):
    """Random images with the corner cases of HSV: grey pixels, channel ties, 0 and 1."""
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    x[0, :, :3] = 0.5  # grey
    x[1] = x[1, :1]  # grey image
    x[2, 0] = x[2, 1]  # r == g
    x[3, 1] = x[3, 2]  # g == b
    x[4, :, 6:] = 1.0  # white
    x[5, 1:, :4] = 0.0  # pure red
    return x


@pytest.mark.parametrize("ours, reference, lo, hi", [
    (adjust_brightness_, TF.adjust_brightness, 0.0, 2.0),
    (adjust_contrast_, TF.adjust_contrast, 0.0, 2.0),
    (adjust_saturation_, TF.adjust_saturation, 0.0, 2.0),
    (adjust_hue_, TF.adjust_hue, -0.5, 0.5),
])
def test_colour_ops_match_torchvision_per_image(ours, reference, lo, hi):
    x = images()
    factors = torch.linspace(lo, hi, len(x))  # includes the extremes (identity for hue at 0 too)
    expected = torch.stack([reference(xi, float(f)) for xi, f in zip(x, factors)])
    out = ours(x.clone(), factors)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_hue_zero_shift_is_identity():
    x = images()
    torch.testing.assert_close(adjust_hue_(x.clone(), torch.zeros(len(x))), x, atol=1e-6, rtol=0)


def test_flip_rotate_matches_torch_flip_and_rot90():
    x = images(n=16)
    hflip = torch.arange(16) // 8 == 1
    vflip = torch.arange(16) // 4 % 2 == 1
    k = torch.arange(16) % 4  # all 16 combinations
    expected = []
    for xi, h, v, q in zip(x, hflip, vflip, k):
        xi = xi.flip(-1) if h else xi
        xi = xi.flip(-2) if v else xi
        expected.append(torch.rot90(xi, int(q), dims=(-2, -1)))
    assert torch.equal(flip_rotate(x, hflip, vflip, k), torch.stack(expected))


def test_augment_batch_equals_torchvision_ops_on_each_image():
    cfg = AugmentConfig(hue=0.2)
    x = images(n=16)
    out = augment_batch(x, cfg, torch.Generator().manual_seed(3))
    d = draw(len(x), cfg, torch.Generator().manual_seed(3))
    for i, xi in enumerate(x):
        xi = xi.flip(-1) if d.hflip[i] else xi
        xi = xi.flip(-2) if d.vflip[i] else xi
        xi = torch.rot90(xi, int(d.k[i]), dims=(-2, -1))
        xi = TF.adjust_brightness(xi, float(d.brightness[i]))
        xi = TF.adjust_contrast(xi, float(d.contrast[i]))
        xi = TF.adjust_saturation(xi, float(d.saturation[i]))
        xi = TF.adjust_hue(xi, float(d.hue[i]))
        torch.testing.assert_close(out[i], xi, atol=1e-5, rtol=0)
    assert out.min() >= 0 and out.max() <= 1


def test_same_seed_same_output_and_input_untouched():
    x = images()
    before = x.clone()
    a = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(7))
    b = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(7))
    c = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, before)


def test_each_image_gets_its_own_draws_within_range():
    cfg = AugmentConfig(brightness=0.25, contrast=1.5, saturation=0.1, hue=0.04)
    d = draw(256, cfg, torch.Generator().manual_seed(0))
    for name, lo, hi in [("brightness", 0.75, 1.25), ("contrast", 0.0, 2.5),
                         ("saturation", 0.9, 1.1), ("hue", -0.04, 0.04)]:
        f = getattr(d, name)
        assert f.min() >= lo and f.max() <= hi, name
        assert len(f.unique()) == 256, name
    assert 0 < d.hflip.sum() < 256 and 0 < d.vflip.sum() < 256
    assert set(d.k.tolist()) == {0, 1, 2, 3}


def test_disabled_config_is_identity():
    x = images()
    out = augment_batch(x, OFF, torch.Generator().manual_seed(0))
    assert torch.equal(out, x) and out is not x


def test_rot90_needs_square_images():
    x = torch.rand(2, 3, 8, 6)
    with pytest.raises(ValueError, match="square"):
        augment_batch(x, AugmentConfig(), torch.Generator())
    out = augment_batch(x, AugmentConfig(rot90=False), torch.Generator())
    assert out.shape == x.shape


def test_rejects_bad_input_and_config():
    with pytest.raises(ValueError):
        augment_batch(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), AugmentConfig(), torch.Generator())
    with pytest.raises(ValueError):
        AugmentConfig(brightness=-0.1)
    with pytest.raises(ValueError):
        AugmentConfig(hue=0.6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = images(n=16)
    cpu = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(1))
    gpu = augment_batch(x.cuda(), AugmentConfig(), torch.Generator().manual_seed(1))
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)
