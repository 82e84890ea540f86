"""A lab's own encoder from a local TorchScript file: checked at start-up, a feature space like any."""

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from histosynth.config_schema import check_encoder_file
from histosynth.errors import InputError
from histosynth.evaluation.features import extract_features
from histosynth.evaluation.quality import aggregate_quality, write_quality
from histosynth.evaluation.spaces import encoder_extractor, encoders_from


class TinyEncoder(nn.Module):
    """A stand-in for UNI / Phikon: (N, 3, S, S) -> (N, 16, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=2)

    def forward(self, x):
        return torch.relu(self.conv(x)).mean(dim=(2, 3), keepdim=True) + 0.1


def scripted(tmp_path, name="enc.pt"):
    """The two-line export the README shows, done by the test itself."""
    torch.manual_seed(0)
    path = tmp_path / name
    torch.jit.script(TinyEncoder().eval()).save(str(path))
    return path


def test_a_scripted_encoder_is_a_feature_extractor(tmp_path):
    path = scripted(tmp_path)
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    feats = extract_features(encoder_extractor("lab", path, 48, mean, std), images, batch_size=2)
    assert feats.shape == (5, 16)
    np.testing.assert_allclose((feats ** 2).mean(axis=1), 1.0, rtol=1e-5)  # UnitRMS, like the domain features
    # Independently: resize, normalise, encode, flatten, scale.
    net = torch.jit.load(str(path))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = nn.functional.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    ref = net(x).flatten(1)
    ref = ref * (16 ** 0.5 / ref.norm(dim=1, keepdim=True))
    np.testing.assert_allclose(feats, ref.detach().numpy(), rtol=1e-4, atol=1e-5)
    (enc,) = encoders_from({"lab": {"path": str(path), "image_size": 48, "mean": mean, "std": std}}, {"lab": "s.npz"})
    assert (enc.name, enc.image_size, enc.stats) == ("lab", 48, "s.npz")


def test_a_missing_or_malformed_file_names_the_key(tmp_path):
    with pytest.raises(InputError, match=r"quality.encoders.uni.path: .*missing.pt does not exist"):
        check_encoder_file("uni", tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match=r"quality.encoders.uni.path: .*junk.pt is not a TorchScript file"):
        check_encoder_file("uni", junk)
    state = tmp_path / "state.pt"  # a plain state dict is a zip too, but holds no TorchScript code
    torch.save(TinyEncoder().state_dict(), state)
    with pytest.raises(InputError, match="not a TorchScript module"):
        check_encoder_file("uni", state)
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as z:
        z.writestr("x/readme.txt", "")
    with pytest.raises(InputError, match="not a TorchScript module"):
        check_encoder_file("uni", tmp_path / "empty.zip")
    check_encoder_file("uni", scripted(tmp_path))  # and a real export passes


def test_an_encoder_space_reaches_the_quality_file_and_table(tmp_path):
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(60, 8)), rng.normal(0.3, 1.1, size=(50, 8))
    lab_real, lab_fake = rng.normal(size=(60, 4)), rng.normal(0.5, 1, size=(50, 4))
    q = write_quality(tmp_path / "q.json", {"domain": (real, fake), "lab": (lab_real, lab_fake)}, generator="cgan",
                      filter="none", subset=0, kid_subsets=5,
                      labels=(np.arange(60) % 2, np.arange(50) % 2, ["normal", "tumor"]))
    assert {"fid", "kid", "precision", "recall", "density", "coverage"} <= set(q["lab"])
    assert set(q["per_class"]["tumor"]) == {"domain", "lab"}
    out = [tmp_path / f"quality.{e}" for e in ("tsv", "md", "tex")]
    aggregate_quality([tmp_path / "q.json"], *out)
    header = out[1].read_text().splitlines()[0]
    assert "| FD lab ↓ | KID lab ×10³ ↓ |" in header
    tsv = pd.read_csv(out[0], sep="\t")
    assert tsv.loc[0, "lab_fid_mean"] == pytest.approx(q["lab"]["fid"])
    assert tsv.loc[0, "lab_coverage_mean"] == pytest.approx(q["lab"]["coverage"])
    assert json.loads((tmp_path / "q.json").read_text())["lab"]["n_real"] == 60
