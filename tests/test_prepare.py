"""The `prepare` stage on tiny fixtures in the exact raw layouts of each dataset."""

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histosynth.data import prepare as prep
from histosynth.data import tissue
from histosynth.data.prepare import prepare_dataset
from histosynth.data.store import read_store, store_info
from histosynth.errors import InputError

SPLITS = ("train", "valid", "test")
PCAM = "camelyonpatch_level_2_split_{split}_{xy}.h5"


def assert_counts_match_stores(out_dir, counts):
    table = pd.read_csv(out_dir / "patch_counts.tsv", sep="\t")
    assert list(table.columns) == ["split", "class", "count"]
    for split in SPLITS:
        _, labels, names = read_store(out_dir / f"{split}.h5")
        assert counts[split] == {c: int((labels == i).sum()) for i, c in enumerate(names)}
        rows = table[table["split"] == split]
        assert dict(zip(rows["class"], rows["count"])) == counts[split]


def assert_no_output(out_dir):
    assert not out_dir.exists() or list(out_dir.iterdir()) == []  # no stores, no table, no temp files


# ---------------------------------------------------------------------------
# PatchCamelyon


def write_pcam(raw, sizes={"train": 20, "valid": 8, "test": 6}, seed=0):
    """h5 triplet named, keyed, shaped and typed like the decompressed Zenodo files."""
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n in sizes.items():
        x = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        y = rng.integers(0, 2, (n, 1, 1, 1)).astype(np.uint8)
        for key, arr in (("x", x), ("y", y)):
            with h5py.File(raw / PCAM.format(split=split, xy=key), "w") as f:
                f.create_dataset(key, data=arr)
        data[split] = (x, y.reshape(-1))
    return data


def test_pcam_copies_pixels_exactly_in_blocks(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prep, "BLOCK", 7)  # several blocks per split
    data = write_pcam(tmp_path / "raw")
    counts = prepare_dataset("pcam", tmp_path / "raw", tmp_path / "out")
    for split, (x, y) in data.items():
        gx, gy, names = read_store(tmp_path / "out" / f"{split}.h5")
        assert names == ["normal", "tumor"]
        assert np.array_equal(gx, x) and np.array_equal(gy, y)
        prov = store_info(tmp_path / "out" / f"{split}.h5").provenance
        assert prov["dataset"] == "pcam" and prov["split"] == split
        assert prov["source_files"][0].endswith(PCAM.format(split=split, xy="x"))
        with h5py.File(tmp_path / "out" / f"{split}.h5") as f:  # same layout as store.write_store
            assert f["images"].chunks == (len(x),) + x.shape[1:] and f["labels"].dtype == np.int64
            assert f.attrs["format_version"] == 1
    assert_counts_match_stores(tmp_path / "out", counts)
    assert "split\tclass\tcount" in capsys.readouterr().out


def test_pcam_class_order_and_resize(tmp_path):
    data = write_pcam(tmp_path / "raw")
    prepare_dataset("pcam", tmp_path / "raw", tmp_path / "out", classes=["tumor", "normal"], image_size=32)
    gx, gy, names = read_store(tmp_path / "out" / "valid.h5")
    assert names == ["tumor", "normal"] and gx.shape == (8, 32, 32, 3)
    assert np.array_equal(gy, 1 - data["valid"][1])


def test_pcam_single_class_drops_other_rows(tmp_path):
    data = write_pcam(tmp_path / "raw")
    counts = prepare_dataset("pcam", tmp_path / "raw", tmp_path / "out", classes=["tumor"])
    gx, gy, _ = read_store(tmp_path / "out" / "train.h5")
    x, y = data["train"]
    assert np.array_equal(gx, x[y == 1]) and (gy == 0).all() and counts["train"] == {"tumor": int(y.sum())}


def corrupt_truncate(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def replace_key(key, arr):
    def corrupt(path):
        with h5py.File(path, "w") as f:
            f.create_dataset(key, data=arr)
    return corrupt


@pytest.mark.parametrize("file, corrupt, message", [
    ("x", corrupt_truncate, "not a readable HDF5 file"),
    ("x", lambda p: p.unlink(), "not found"),
    ("y", replace_key("y", np.zeros((5, 1, 1, 1), np.uint8)), "6 images but .* 5 labels"),
    ("x", replace_key("x", np.zeros((6, 96, 96), np.uint8)), r"must be uint8 \(N, 96, 96, 3\)"),
    ("x", replace_key("x", np.zeros((6, 96, 96, 3), np.float32)), r"must be uint8 \(N, 96, 96, 3\)"),
    ("y", replace_key("y", np.full((6, 1, 1, 1), 2, np.uint8)), r"labels must be 0 \(normal\) or 1"),
    ("y", replace_key("labels", np.zeros((6, 1, 1, 1), np.uint8)), "missing key 'y'"),
])
def test_pcam_bad_test_split_fails_and_leaves_nothing(tmp_path, file, corrupt, message):
    write_pcam(tmp_path / "raw")
    bad = tmp_path / "raw" / PCAM.format(split="test", xy=file)
    corrupt(bad)
    with pytest.raises(InputError, match=message) as err:
        prepare_dataset("pcam", tmp_path / "raw", tmp_path / "out")
    assert "split_test" in str(err.value)
    assert_no_output(tmp_path / "out")  # train and valid were written before the failure


def test_pcam_unknown_class_and_option(tmp_path):
    write_pcam(tmp_path / "raw")
    with pytest.raises(InputError, match=r"class 'FOO'.*\['normal', 'tumor'\]"):
        prepare_dataset("pcam", tmp_path / "raw", tmp_path / "out", classes=["normal", "FOO"])
    with pytest.raises(InputError, match="unknown option 'seed' for dataset 'pcam'"):
        prepare_dataset("pcam", tmp_path / "raw", tmp_path / "out", options={"seed": 1})
    assert_no_output(tmp_path / "out")


def test_failure_keeps_earlier_finished_outputs(tmp_path):
    write_pcam(tmp_path / "raw")
    prepare_dataset("pcam", tmp_path / "raw", tmp_path / "out")
    before = (tmp_path / "out" / "train.h5").read_bytes()
    corrupt_truncate(tmp_path / "raw" / PCAM.format(split="valid", xy="x"))
    with pytest.raises(InputError):
        prepare_dataset("pcam", tmp_path / "raw", tmp_path / "out", image_size=32)
    assert (tmp_path / "out" / "train.h5").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["patch_counts.tsv", "test.h5", "train.h5",
                                                                    "valid.h5"]


# ---------------------------------------------------------------------------
# NCT-CRC-HE-100K + CRC-VAL-HE-7K

NCT_COLOURS = {"ADI": (250, 240, 240), "BACK": (20, 20, 20), "LYM": (60, 30, 120), "TUM": (150, 60, 140)}


def write_nct(raw, n_train=5, n_test=2):
    """<raw>/NCT-CRC-HE-100K/<CLASS>/*.tif and <raw>/CRC-VAL-HE-7K/<CLASS>/*.tif, 224 px, one colour per class."""
    for folder, n in (("NCT-CRC-HE-100K", n_train), ("CRC-VAL-HE-7K", n_test)):
        for cls, colour in NCT_COLOURS.items():
            (raw / folder / cls).mkdir(parents=True)
            for i in range(n):
                mode = "RGBA" if i == 0 else "RGB"  # converted to RGB
                Image.new(mode, (224, 224), colour).save(raw / folder / cls / f"{cls}-{i:04d}.tif")


def test_nct_class_subset_resize_and_stratified_valid(tmp_path):
    write_nct(tmp_path / "raw")
    counts = prepare_dataset("nct_crc_he", tmp_path / "raw", tmp_path / "out", classes=["TUM", "ADI"],
                             image_size=64, options={"valid_fraction": 0.2, "seed": 3})
    assert counts == {"train": {"TUM": 4, "ADI": 4}, "valid": {"TUM": 1, "ADI": 1},
                      "test": {"TUM": 2, "ADI": 2}}
    for split in SPLITS:
        x, y, names = read_store(tmp_path / "out" / f"{split}.h5")
        assert names == ["TUM", "ADI"] and x.shape[1:] == (64, 64, 3)
        for i, cls in enumerate(names):
            assert (x[y == i] == np.array(NCT_COLOURS[cls], np.uint8)).all()  # right pixels, right label
    assert_counts_match_stores(tmp_path / "out", counts)
    prov = store_info(tmp_path / "out" / "valid.h5").provenance
    assert prov["options"] == {"valid_fraction": 0.2, "seed": 3} and prov["source_files"][0].endswith("NCT-CRC-HE-100K")


def test_nct_default_classes_native_size(tmp_path):
    write_nct(tmp_path / "raw", n_train=3, n_test=1)
    counts = prepare_dataset("nct_crc_he", tmp_path / "raw", tmp_path / "out")
    assert list(counts["test"]) == sorted(NCT_COLOURS)
    assert store_info(tmp_path / "out" / "train.h5").image_shape == (224, 224, 3)


def test_nct_errors_name_the_file_or_class(tmp_path):
    write_nct(tmp_path / "raw", n_train=3, n_test=1)
    with pytest.raises(InputError, match=r"class 'FOO'.*\['ADI', 'BACK', 'LYM', 'TUM'\]"):
        prepare_dataset("nct_crc_he", tmp_path / "raw", tmp_path / "out", classes=["FOO"])
    bad = tmp_path / "raw" / "CRC-VAL-HE-7K" / "LYM" / "LYM-0000.tif"
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(InputError, match="LYM-0000.tif: not a readable image"):
        prepare_dataset("nct_crc_he", tmp_path / "raw", tmp_path / "out")
    assert_no_output(tmp_path / "out")


# ---------------------------------------------------------------------------
# Demo: spatially disjoint regions


def synthetic_slide(h, w, seed):
    """Pink-purple textured tissue ellipse on a bright, nearly grey background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    inside = ((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.35 * w)) ** 2 < 1
    image = rng.integers(235, 250, (h, w, 1)).repeat(3, axis=2).astype(np.uint8)
    texture = rng.integers(-40, 40, (h, w, 1))
    tissue_rgb = np.clip(np.array([200, 110, 170]) + texture, 0, 255).astype(np.uint8)
    image[inside] = tissue_rgb[inside]
    return image, inside


def write_demo(raw):
    raw.mkdir(parents=True)
    tumor, _ = synthetic_slide(400, 360, seed=1)
    normal, _ = synthetic_slide(480, 420, seed=2)
    Image.fromarray(tumor).save(raw / "target_image.png")
    # An .svs is a TIFF; put a small thumbnail page first to check the largest page is used.
    thumb = Image.fromarray(normal[::8, ::8].copy())
    thumb.save(raw / "cmu_small_region.svs", format="TIFF", save_all=True, append_images=[Image.fromarray(normal)])
    return {"normal": normal, "tumor": tumor}


DEMO_OPTIONS = {"patch_size": 32, "stride": 16, "region_size": 80, "min_tissue": 0.5, "seed": 0}


def test_tissue_mask_finds_the_tissue_and_keeps_all_tissue_tiles_whole():
    image, inside = synthetic_slide(200, 240, seed=0)
    mask = tissue.tissue_mask(image)
    assert (mask & inside).sum() / (mask | inside).sum() > 0.95
    # A tile that is all tissue has no background mode: Otsu alone would cut it in two.
    assert tissue.tissue_mask(image[70:130, 90:150]).mean() > 0.95
    assert tissue.otsu_threshold(np.r_[np.full(100, 10), np.full(100, 200)].astype(np.uint8)) in range(10, 200)


def test_grid_patches_are_disjoint_across_splits_and_mostly_tissue():
    image, _ = synthetic_slide(400, 360, seed=1)
    mask = tissue.tissue_mask(image)
    fractions = {"train": 0.6, "valid": 0.2, "test": 0.2}
    out = tissue.grid_patches(image, mask, 32, 16, 80, fractions, 0.5, seed=0)
    owner = np.full(mask.shape, -1)
    for s, split in enumerate(SPLITS):
        patches, boxes = out[split]
        assert len(boxes) > 0 and patches.shape == (len(boxes), 32, 32, 3)
        for patch, (y0, x0, y1, x1) in zip(patches, boxes):
            assert np.array_equal(patch, image[y0:y1, x0:x1])
            assert mask[y0:y1, x0:x1].mean() >= 0.5
            assert ((owner[y0:y1, x0:x1] == -1) | (owner[y0:y1, x0:x1] == s)).all()  # no pixel in two splits
            owner[y0:y1, x0:x1] = s
    total = sum(len(out[s][1]) for s in SPLITS)
    assert abs(len(out["train"][1]) / total - 0.6) < 0.15


def test_assign_regions_seeds_every_split_then_tracks_fractions():
    weights = [0, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 0]
    assigned = tissue.assign_regions(weights, {"train": 0.6, "valid": 0.2, "test": 0.2}, seed=4)
    assert assigned[0] == assigned[-1] == -1
    assert np.bincount(assigned[1:-1], minlength=3).tolist() == [6, 2, 2]
    assert np.array_equal(assigned, tissue.assign_regions(weights, {"train": 0.6, "valid": 0.2, "test": 0.2}, 4))


def test_demo_prepare(tmp_path):
    images = write_demo(tmp_path / "raw")
    counts = prepare_dataset("demo", tmp_path / "raw", tmp_path / "out", options=DEMO_OPTIONS)
    assert_counts_match_stores(tmp_path / "out", counts)
    assert all(n > 0 for split in SPLITS for n in counts[split].values())
    for cls in ("normal", "tumor"):
        assert (tmp_path / "out" / f"demo_regions_{cls}.png").stat().st_size > 1000
    prov = store_info(tmp_path / "out" / "test.h5").provenance
    assert prov["options"]["region_size"] == 80 and prov["options"]["split_fractions"]["train"] == 0.6
    assert prov["grid"]["normal"]["image_hw"] == list(images["normal"].shape[:2])  # the large page
    assert sum(prov["grid"]["tumor"]["patches"].values()) == sum(counts[s]["tumor"] for s in SPLITS)
    x, y, names = read_store(tmp_path / "out" / "train.h5")
    assert names == ["normal", "tumor"] and x.shape[1:] == (32, 32, 3)


def test_demo_resize_class_subset_and_option_errors(tmp_path):
    write_demo(tmp_path / "raw")
    counts = prepare_dataset("demo", tmp_path / "raw", tmp_path / "out", classes=["tumor"], image_size=16,
                             options=DEMO_OPTIONS)
    assert list(counts["valid"]) == ["tumor"] and store_info(tmp_path / "out" / "valid.h5").image_shape == (16, 16, 3)
    assert not (tmp_path / "out" / "demo_regions_normal.png").exists()
    with pytest.raises(InputError, match=r"unknown option 'patchsize'.*valid options: min_tissue, patch_size"):
        prepare_dataset("demo", tmp_path / "raw", tmp_path / "out2", options={"patchsize": 32})
    with pytest.raises(InputError, match="split_fractions"):
        prepare_dataset("demo", tmp_path / "raw", tmp_path / "out2",
                        options={"split_fractions": {"train": 0.9, "valid": 0.2, "test": 0.1}})
    with pytest.raises(InputError, match="need >= 3 tissue regions"):
        prepare_dataset("demo", tmp_path / "raw", tmp_path / "out2", options={**DEMO_OPTIONS, "region_size": 400})
    assert_no_output(tmp_path / "out2")


# ---------------------------------------------------------------------------
# Folder: the user's own images


def write_folder(root, n=10, size=16):
    """<root>/<class>/*.png|*.JPG; each image a unique flat colour so rows can be traced to files."""
    colours = {}
    for c, cls in enumerate(("benign", "malignant")):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            name = f"img{i}.JPG" if i == 0 else f"img{i}.png"
            colour = (10 * i, 100 + 50 * c, 7)
            Image.new("RGB", (size, size), colour).save(root / cls / name, quality=100)
            colours[f"{cls}/{name}"] = colour
    return colours


def test_folder_stratified_fractions(tmp_path):
    write_folder(tmp_path / "imgs")
    counts = prepare_dataset("folder", None, tmp_path / "out", options={"root": tmp_path / "imgs", "seed": 1})
    assert counts == {"train": {"benign": 7, "malignant": 7}, "valid": {"benign": 2, "malignant": 2},
                      "test": {"benign": 1, "malignant": 1}}
    assert_counts_match_stores(tmp_path / "out", counts)
    pixels = [tuple(x[0, 0]) for s in SPLITS for x in read_store(tmp_path / "out" / f"{s}.h5")[0]]
    assert len(set(pixels)) == 20  # every image once, none in two splits


def test_folder_split_files(tmp_path):
    colours = write_folder(tmp_path / "imgs")
    lists = {"train": ["benign/img1.png", "malignant/img2.png", "benign/img0.JPG"],
             "valid": ["malignant/img3.png", "benign/img4.png"], "test": ["benign/img5.png", "malignant/img6.png"]}
    split_files = {}
    for split, lines in lists.items():
        split_files[split] = tmp_path / f"{split}.txt"
        split_files[split].write_text("# listed\n" + "\n".join(lines) + "\n\n")
    counts = prepare_dataset("folder", None, tmp_path / "out", image_size=8,
                             options={"root": tmp_path / "imgs", "split_files": split_files})
    assert counts["train"] == {"benign": 2, "malignant": 1}
    for split, lines in lists.items():
        x, y, names = read_store(tmp_path / "out" / f"{split}.h5")
        assert x.shape[1:] == (8, 8, 3)
        assert [names[i] for i in y] == [line.split("/")[0] for line in lines]
        expected = np.array([colours[line] for line in lines])
        assert np.abs(x[:, 4, 4].astype(int) - expected).max() <= 2  # JPEG rounding
    assert store_info(tmp_path / "out" / "test.h5").provenance["source_files"] == [str(split_files["test"])]


def test_folder_errors(tmp_path):
    root = tmp_path / "imgs"
    write_folder(root)
    opts = {"root": root}
    Image.new("RGB", (20, 16)).save(root / "malignant" / "odd.png")
    with pytest.raises(InputError, match=r"odd.png: image is 20x16 px, expected 16x16"):
        prepare_dataset("folder", None, tmp_path / "out", options=opts)
    prepare_dataset("folder", None, tmp_path / "ok", image_size=16, options=opts)  # resizing makes it fine
    (root / "malignant" / "odd.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="odd.png: not a readable image"):
        prepare_dataset("folder", None, tmp_path / "out", options=opts)
    (root / "malignant" / "odd.png").unlink()

    (tmp_path / "t.txt").write_text("benign/img1.png\nbenign/missing.png\n")
    (tmp_path / "v.txt").write_text("benign/img2.png\n")
    (tmp_path / "e.txt").write_text("benign/img1.png\n")
    files = {"train": tmp_path / "t.txt", "valid": tmp_path / "v.txt", "test": tmp_path / "e.txt"}
    with pytest.raises(InputError, match=r"t.txt:2: listed image .*missing.png does not exist"):
        prepare_dataset("folder", None, tmp_path / "out", options={**opts, "split_files": files})
    (tmp_path / "t.txt").write_text("benign/img1.png\n")
    with pytest.raises(InputError, match=r"e.txt:1: benign/img1.png is already in split 'train'"):
        prepare_dataset("folder", None, tmp_path / "out", options={**opts, "split_files": files})

    (root / "empty").mkdir()
    with pytest.raises(InputError, match="empty: class folder holds no images"):
        prepare_dataset("folder", None, tmp_path / "out", options=opts)
    with pytest.raises(InputError, match="unknown option 'split_file'.*root, seed, split_files, split_fractions"):
        prepare_dataset("folder", None, tmp_path / "out", options={**opts, "split_file": files})
    assert_no_output(tmp_path / "out")
