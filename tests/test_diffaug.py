"""DiffAugment (histosynth.generative.diffaug): each transform does what it says, per image,
and lets gradients through to the generator."""

import pytest
import torch

from histosynth.generative import diffaug


def images(n=16, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_no_policy_is_the_identity():
    x = images()
    assert torch.equal(diffaug.augment(x, ()), x)


def test_translation_is_an_integer_shift_with_zeros_entering():
    torch.manual_seed(0)
    x = images(n=32) + 2  # no zeros inside the images: a zero pixel can only have entered
    out = diffaug.translation(x, ratio=0.125)  # up to 2 px at 16 px
    shifts = set()
    for a, b in zip(x, out):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(torch.roll(a, (dy, dx), dims=(1, 2))[:, 2:-2, 2:-2], b[:, 2:-2, 2:-2])]
        assert len(found) == 1, "every image is one shift of itself"
        dy, dx = found[0]
        assert (b == 0).all(dim=0).sum() == 16 * 16 - (16 - abs(dy)) * (16 - abs(dx))
        shifts.add(found[0])
    assert len(shifts) > 5, "each image draws its own shift"


def test_cutout_zeroes_one_square_per_image():
    torch.manual_seed(0)
    x = images(n=32) + 2
    out = diffaug.cutout(x, ratio=0.5)
    for a, b in zip(x, out):
        hole = (b == 0).all(dim=0)
        rows, cols = hole.any(dim=1).nonzero().squeeze(1), hole.any(dim=0).nonzero().squeeze(1)
        assert 0 < len(rows) <= 8 and 0 < len(cols) <= 8
        assert hole.sum() == len(rows) * len(cols), "the hole is a rectangle (a square clipped at an edge)"
        assert torch.equal(b[:, ~hole], a[:, ~hole]), "nothing else changes"


def test_color_shifts_and_scales_each_image_and_passes_gradients():
    torch.manual_seed(0)
    x = images(n=64).requires_grad_(True)
    out = diffaug.color(x)
    means = out.detach().mean(dim=(1, 2, 3)) - x.detach().mean(dim=(1, 2, 3))
    assert means.std() > 0.1, "brightness is drawn per image"
    diffaug.augment(x, diffaug.POLICIES).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("policy", [("translation",), ("cutout",), ("color",)])
def test_the_same_call_differs_between_calls(policy):
    x = images()
    assert not torch.equal(diffaug.augment(x, policy), diffaug.augment(x, policy))


@pytest.mark.parametrize("family", ["histogan", "vitgan"])
def test_the_config_schema_offers_exactly_the_transforms(family):
    from histosynth.config_schema import load_schema

    model = load_schema()["properties"]["generator"]["properties"][family]["properties"]["model"]
    assert tuple(model["properties"]["diffaug"]["items"]["enum"]) == diffaug.POLICIES
