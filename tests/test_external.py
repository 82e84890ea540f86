"""External synthetic sets (`family: external`, histosynth.data.external): the checks users meet
first, provenance by content, and the import against prepare's own resizer."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histosynth.data import external
from histosynth.data.prepare import resize_images
from histosynth.data.store import read_store, store_info, write_store
from histosynth.errors import InputError

CLASSES = ["normal", "tumor"]


def write_zenodo_layout(root: Path, n_per_class=20, size=96, subsets=(0,), seed=0) -> Path:
    """A synthetic set laid out as Zenodo record 13928371 describes its own (generator / filter /
    subset folders of class-labelled images, labels 0 = normal, 1 = tumor): PNGs, tumour redder.
    Returns the `path` template of the DiT set without filtering."""
    rng = np.random.default_rng(seed)
    for subset in subsets:
        for label in (0, 1):
            folder = root / "DiT" / "none" / f"subset{subset}" / str(label)
            folder.mkdir(parents=True)
            for i in range(n_per_class):
                x = rng.integers(0, 120, (size, size, 3)).astype(np.uint8)
                x[..., 0] += np.uint8(100 * label)
                Image.fromarray(x).save(folder / f"{i:05d}.png")
    return str(root / "DiT" / "none" / "subset{subset}")


def write_canonical_set(path: Path, n_per_class=24, size=32, seed=1) -> Path:
    """A synthetic set as one canonical HDF5 store (histosynth.data.store)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n_per_class)
    images = rng.integers(0, 120, (len(labels), size, size, 3)).astype(np.uint8)
    images[..., 0] += (100 * labels).astype(np.uint8)[:, None, None]
    write_store(path, images, labels, CLASSES, {"made_by": "a lab's own generator"})
    return path


def real_subset(tmp_path, n_per_class=10, size=32):
    """A train store and its subset file: n_per_class real images of each class."""
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], n_per_class)
    write_store(tmp_path / "train.h5", rng.integers(0, 255, (len(labels), size, size, 3), dtype=np.uint8), labels,
                CLASSES)
    np.save(tmp_path / "subset0.npy", np.arange(len(labels)))
    return tmp_path / "train.h5", tmp_path / "subset0.npy"


def import_into(tmp_path, source, name="out", ratio=0.5, pool_factor=4):
    train, subset = real_subset(tmp_path)
    out = tmp_path / name
    external.import_pool(source, train, subset, out / "pool.h5", out / "samples.png", out / "sources.tsv",
                         ratio=ratio, pool_factor=pool_factor, seed=0)
    return out


def test_folder_set_is_scanned_mapped_and_imported_with_prepares_resizer(tmp_path):
    template = write_zenodo_layout(tmp_path / "zenodo", n_per_class=25)
    source = external.scan("dit_pub", template, 0, {"0": "normal", "1": "tumor"}, CLASSES)
    assert source.counts == {"normal": 25, "tumor": 25}
    out = import_into(tmp_path, source)
    images, labels, names = read_store(out / "pool.h5")
    # pool_factor · r · N_i = 4 · 0.5 · 10 = 20 per class, at the dataset's 32 px.
    assert names == CLASSES and np.bincount(labels).tolist() == [20, 20] and images.shape[1:] == (32, 32, 3)
    rows = [line.split("\t") for line in (out / "sources.tsv").read_text().splitlines()[1:]]
    assert len(rows) == 40 and {r[1] for r in rows} == set(CLASSES)
    # Each pool image is its source file through prepare's LANCZOS resize, and its hash is that file's.
    for j in (0, 39):
        _, c, rel, digest = rows[j]
        path = Path(template.format(subset=0)) / rel
        assert external.file_sha256(path) == digest and CLASSES[labels[j]] == c
        expected = resize_images(np.asarray(Image.open(path).convert("RGB"))[None], 32)[0]
        np.testing.assert_array_equal(images[j], expected)
    prov = store_info(out / "pool.h5").provenance
    assert prov["external"] == "dit_pub" and prov["available"] == {"normal": 25, "tumor": 25}
    assert (out / "samples.png").read_bytes()[:4] == b"\x89PNG"


def test_the_same_images_give_the_same_pool_wherever_they_live(tmp_path):
    template = write_zenodo_layout(tmp_path / "a", n_per_class=25)
    first = import_into(tmp_path, external.scan("x", template, 0, {"0": "normal", "1": "tumor"}, CLASSES), "first")
    # Moved, and every file renamed: the same digest and the same pool.
    moved = tmp_path / "b" / "elsewhere"
    shutil.copytree(Path(template.format(subset=0)), moved)
    for f in moved.rglob("*.png"):
        f.rename(f.with_name("renamed_" + f.stem[::-1] + ".png"))
    a = external.scan("x", template, 0, {"0": "normal", "1": "tumor"}, CLASSES)
    b = external.scan("x", str(moved), 0, {"0": "normal", "1": "tumor"}, CLASSES)
    cache = tmp_path / "cache.json"
    assert external.content_digest(a, cache) == external.content_digest(b, cache)
    second = import_into(tmp_path, b, "second")
    np.testing.assert_array_equal(read_store(first / "pool.h5")[0], read_store(second / "pool.h5")[0])
    # One image replaced (same name, new pixels): another digest, although the cache held the old one.
    victim = next(moved.rglob("*.png"))
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(victim)
    os.utime(victim, ns=(1, 1))  # even with an old mtime: the size or mtime differs from the cache's
    assert external.content_digest(b, cache) != external.content_digest(a, cache)
    # The class mapping is part of what the pool is made of.
    swapped = external.scan("x", template, 0, {"0": "tumor", "1": "normal"}, CLASSES)
    assert external.content_digest(swapped, cache) != external.content_digest(a, cache)


def test_a_canonical_store_is_a_set_too(tmp_path):
    path = write_canonical_set(tmp_path / "set.h5", n_per_class=12, size=48)
    source = external.scan("lab", str(path), 0, {}, CLASSES)
    assert source.counts == {"normal": 12, "tumor": 12}
    out = import_into(tmp_path, source, pool_factor=2)  # 2 · 0.5 · 10 = 10 per class
    images, labels, _ = read_store(out / "pool.h5")
    assert np.bincount(labels).tolist() == [10, 10] and images.shape[1:] == (32, 32, 3)
    sources = (out / "sources.tsv").read_text().splitlines()
    assert sources[1].split("\t")[2].startswith("row ")


@pytest.mark.parametrize("case,needle", [
    ("missing", "generator.x.path: {root}/nowhere is not a folder"),
    ("no_folders", "holds no class folders"),
    ("unknown_class", "class folder {root}/set/2 is not a class of the dataset (normal, tumor): map it"),
    ("empty_class", "{root}/set/1: class folder holds no images"),
    ("missing_class", "has no images of class 'tumor'"),
    ("mapping_typo", "generator.x.classes maps '7', which {root}/set does not have"),
    ("missing_store", "generator.x.path: {root}/set.h5 not found"),
])
def test_bad_sets_are_named_before_any_job(tmp_path, case, needle):
    root = tmp_path / "set"
    template, classes = str(root), {"0": "normal", "1": "tumor"}
    if case != "missing":
        root.mkdir()
    for c in {"unknown_class": ("0", "1", "2"), "empty_class": ("0",), "missing_class": ("0",),
              "mapping_typo": ("0", "1")}.get(case, ()):
        (root / c).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / c / "a.png")
    if case == "empty_class":
        (root / "1").mkdir()
    if case == "missing":
        template = str(tmp_path / "nowhere")
    if case == "mapping_typo":
        classes = {**classes, "7": "tumor"}
    if case == "missing_store":
        template = str(tmp_path / "set.h5")
    with pytest.raises(InputError) as e:
        external.scan("x", template, 0, classes, CLASSES)
    assert needle.format(root=tmp_path) in str(e.value)


def test_a_class_left_out_and_an_unreadable_image(tmp_path):
    template = write_zenodo_layout(tmp_path / "z", n_per_class=6)
    (Path(template.format(subset=0)) / "9").mkdir()  # a class the dataset lacks, left out by `null`
    source = external.scan("x", template, 0, {"0": "normal", "1": "tumor", "9": None}, CLASSES)
    assert source.counts == {"normal": 6, "tumor": 6}
    bad = Path(template.format(subset=0)) / "1" / "00003.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"00003.png: not a readable image"):
        import_into(tmp_path, source, pool_factor=2)  # a pool of 10 per class: every image read
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written


def test_too_few_images_for_the_filters_is_an_error_not_a_smaller_set(tmp_path):
    template = write_zenodo_layout(tmp_path / "z", n_per_class=4)  # r·N_i = 5 per class are needed
    source = external.scan("x", template, 0, {"0": "normal", "1": "tumor"}, CLASSES)
    with pytest.raises(InputError, match=r"has 4 images of class 'normal', fewer than the 5 \(r·N_i"):
        import_into(tmp_path, source)


def test_a_threshold_filter_short_on_an_external_set_says_so(tmp_path):
    import torch

    from histosynth.classification.classifier import build_classifier
    from histosynth.evaluation.filtering import FilterConfig, filter_pool

    template = write_zenodo_layout(tmp_path / "z", n_per_class=6)
    out = import_into(tmp_path, external.scan("x", template, 0, {"0": "normal", "1": "tumor"}, CLASSES),
                      pool_factor=1)
    real, labels, _ = read_store(tmp_path / "train.h5")
    features = np.random.default_rng(0).normal(size=(len(real), 4))
    pool_features = np.random.default_rng(1).normal(size=(10, 4)) + 50  # far from every real image
    torch.save(build_classifier("resnet18", 2).state_dict(), tmp_path / "model.pt")
    cfg = FilterConfig("realism", realism_threshold=1.0)
    with pytest.raises(InputError, match=r"external set's pool .* short of 5 normal, 5 tumor.*cannot be sampled"):
        filter_pool(cfg, out / "pool.h5", real, labels, features, tmp_path / "model.pt", "resnet18", None,
                    tmp_path / "kept.h5", tmp_path / "summary.json", pool_features=pool_features)
    assert not (tmp_path / "kept.h5").exists()
    # Filter `none` keeps r·N_i per class of it, the kept store without latent seeds.
    summary = filter_pool(FilterConfig("none"), out / "pool.h5", real, labels, features, tmp_path / "model.pt",
                          "resnet18", None, tmp_path / "kept.h5", tmp_path / "summary.json",
                          pool_features=pool_features)
    assert summary["kept"] == {"normal": 5, "tumor": 5}
    assert "seeds" not in store_info(tmp_path / "kept.h5").extras
    assert json.loads((tmp_path / "summary.json").read_text())["pool"] == 10


def test_a_second_start_up_reads_no_image_again(tmp_path, monkeypatch):
    template = write_zenodo_layout(tmp_path / "z", n_per_class=4)
    source = external.scan("x", template, 0, {"0": "normal", "1": "tumor"}, CLASSES)
    first = external.content_digest(source, tmp_path / "cache.json")
    assert len(json.loads((tmp_path / "cache.json").read_text())) == 8  # every file of every class
    reads = []
    monkeypatch.setattr(external, "file_sha256", lambda p: reads.append(p) or "x")
    assert external.content_digest(source, tmp_path / "cache.json") == first and reads == []
