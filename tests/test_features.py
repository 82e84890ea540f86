"""Feature extractors and cached statistics."""

import numpy as np
import pytest
import torch

from histosynth.classification.classifier import build_classifier
from histosynth.errors import InputError
from histosynth.evaluation.features import domain_extractor, extract_features, gaussian_stats, inception_extractor, load_stats, save_stats


def test_domain_extractor_gives_penultimate_features(tmp_path):
    model = build_classifier("resnet18", 2)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    extractor = domain_extractor(tmp_path / "model.pt", "resnet18", 2)
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    feats = extract_features(extractor, images, batch_size=2)
    assert feats.shape == (5, 512) and feats.dtype == np.float64
    # Same as running the trained network by hand up to its pooled features.
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    model.eval()
    net = model.backbone
    with torch.no_grad():
        h = net.maxpool(net.relu(net.bn1(net.conv1((x - model.mean) / model.std))))
        h = net.avgpool(net.layer4(net.layer3(net.layer2(net.layer1(h))))).flatten(1)
    # scaled to root-mean-square 1 per dimension: the KID kernel's argument is a cosine
    h = h * np.sqrt(512) / h.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(feats, h.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose((feats**2).mean(1), 1.0, rtol=1e-5)
    with pytest.raises(InputError, match="classes"):
        domain_extractor(tmp_path / "model.pt", "resnet18", 3)


def test_stats_match_pytorch_fid_convention_and_round_trip(tmp_path):
    feats = np.random.default_rng(0).normal(size=(50, 7))
    mu, sigma = gaussian_stats(feats)
    np.testing.assert_allclose(mu, np.mean(feats, axis=0))
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False))  # pytorch-fid's definition
    save_stats(tmp_path / "real.npz", feats)
    loaded = load_stats(tmp_path / "real.npz")
    np.testing.assert_allclose(loaded["mu"], mu)
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(InputError, match="bad.npz"):
        load_stats(tmp_path / "bad.npz")


def test_inception_loads_a_local_weights_file_and_never_downloads(tmp_path, monkeypatch):
    assert inception_extractor(tmp_path / "absent.pth") is None
    import pytorch_fid.inception as fid_inception

    # A randomly initialised FID Inception stands in for the real weights file.
    monkeypatch.setattr(fid_inception, "load_state_dict_from_url", lambda *a, **k: None)
    net = fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    for name, block in [("Mixed_5b", fid_inception.FIDInceptionA(192, pool_features=32)),
                        ("Mixed_5c", fid_inception.FIDInceptionA(256, pool_features=64)),
                        ("Mixed_5d", fid_inception.FIDInceptionA(288, pool_features=64)),
                        ("Mixed_6b", fid_inception.FIDInceptionC(768, channels_7x7=128)),
                        ("Mixed_6c", fid_inception.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6d", fid_inception.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6e", fid_inception.FIDInceptionC(768, channels_7x7=192)),
                        ("Mixed_7b", fid_inception.FIDInceptionE_1(1280)),
                        ("Mixed_7c", fid_inception.FIDInceptionE_2(2048))]:
        setattr(net, name, block)
    torch.save(net.state_dict(), tmp_path / "pt_inception.pth")
    monkeypatch.undo()

    def no_network(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr("torch.hub.load_state_dict_from_url", no_network)
    extractor = inception_extractor(tmp_path / "pt_inception.pth")
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert extract_features(extractor, images).shape == (2, 2048)
    torch.save({"x": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(InputError, match="wrong.pth"):
        inception_extractor(tmp_path / "wrong.pth")
