"""The `prepare` stage: raw downloads -> one canonical HDF5 store per split.

Writes out_dir/{train,valid,test}.h5 (layout of `store.write_store`) and
out_dir/patch_counts.tsv, plus out_dir/demo_regions_<class>.png for `demo`.
Every output goes to a temporary name first and all are renamed together at the
end, so a failure anywhere leaves no output of this call behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np
from PIL import Image
from tqdm import tqdm

from histosynth.data.store import FORMAT_VERSION, write_store
from histosynth.errors import InputError
from histosynth.fileio import temp_path_beside

SPLITS = ("train", "valid", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
PCAM_FILE = "camelyonpatch_level_2_split_{split}_{xy}.h5"
PCAM_CLASSES = ["normal", "tumor"]
PCAM_SIZE = 96
NCT_DIRS = {"train": "NCT-CRC-HE-100K", "test": "CRC-VAL-HE-7K"}
# The tissue classes of Zenodo record 1214456 (one folder each); prepare reads them from the tree.
NCT_CLASSES = ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"]
DEMO_FILES = {"normal": "cmu_small_region.svs", "tumor": "target_image.png"}
# What PIL raises for a truncated, corrupt or non-image file.
UNREADABLE_IMAGE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
# Rows copied per block: bounds memory (8192 x 96 x 96 x 3 = 226 MB for PCam).
BLOCK = 8192

DEFAULT_OPTIONS = {
    "pcam": {},
    "nct_crc_he": {"valid_fraction": 0.1, "seed": 0},
    "demo": {"patch_size": 64, "stride": None, "region_size": 256,
             "split_fractions": {"train": 0.6, "valid": 0.2, "test": 0.2}, "min_tissue": 0.5, "seed": 0},
    "folder": {"root": None, "split_files": None,
               "split_fractions": {"train": 0.7, "valid": 0.15, "test": 0.15}, "seed": 0},
}


def prepare_dataset(name: str, raw_dir, out_dir, *, classes: list[str] | None = None,
                    image_size: int | None = None, options: dict | None = None) -> dict[str, dict[str, int]]:
    """Write the three split stores and patch_counts.tsv; return counts[split][class]."""
    if name not in DEFAULT_OPTIONS:
        raise InputError(f"dataset name '{name}' is not known; expected one of {sorted(DEFAULT_OPTIONS)}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise InputError(f"image_size must be a positive integer or None, got {image_size!r}")
    opts = resolve_options(name, options)
    prepare = {"pcam": _prepare_pcam, "nct_crc_he": _prepare_nct, "demo": _prepare_demo,
               "folder": _prepare_folder}[name]
    base = {"dataset": name, "classes": classes, "image_size": image_size, "options": opts}
    with _staged_outputs(out_dir) as stage:
        counts = prepare(Path(raw_dir) if raw_dir is not None else None, stage, classes, image_size, opts, base)
        table = ["split\tclass\tcount"] + [f"{s}\t{c}\t{n}" for s in SPLITS for c, n in counts[s].items()]
        with open(stage("patch_counts.tsv"), "w") as f:
            f.write("\n".join(table) + "\n")
    print("\n".join(table))
    return counts


def dataset_classes(name: str, raw_dir, options: dict | None, classes: list[str] | None) -> list[str] | None:
    """The class names `prepare` writes, known before it runs (for start-up checks of what names
    classes, e.g. an external synthetic set); None when only data not there yet can tell."""
    if classes:
        return list(classes)
    tree = {"folder": Path(resolve_options(name, options)["root"] or "") if name == "folder" else None,
            "nct_crc_he": Path(raw_dir) / NCT_DIRS["train"]}.get(name)
    if tree is not None and tree.is_dir():
        return sorted(p.name for p in tree.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {"pcam": PCAM_CLASSES, "nct_crc_he": NCT_CLASSES, "demo": list(DEMO_FILES)}.get(name)


# ---------------------------------------------------------------------------
# Shared machinery


@contextlib.contextmanager
def _staged_outputs(out_dir):
    """Yield stage(name) -> a temporary path for out_dir/name; rename all on success, delete all on error."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pending: dict[Path, Path] = {}

    def stage(name: str) -> Path:
        tmp = temp_path_beside(out_dir / name)
        pending[out_dir / name] = tmp
        return tmp

    try:
        yield stage
        for final, tmp in pending.items():
            os.replace(tmp, final)
    finally:
        for tmp in pending.values():
            tmp.unlink(missing_ok=True)


class _StoreWriter:
    """Fill a store of known size block by block; same layout and attrs as store.write_store."""

    def __init__(self, path, n: int, image_shape, class_names, provenance):
        self.n, self.filled = n, 0
        self.file = h5py.File(path, "w")
        shape = (n,) + tuple(image_shape)
        self.images = self.file.create_dataset("images", shape=shape, dtype=np.uint8,
                                               chunks=(max(1, min(n, 256)),) + tuple(image_shape))
        self.labels = self.file.create_dataset("labels", shape=(n,), dtype=np.int64)
        self.file.attrs["class_names"] = json.dumps(list(class_names))
        self.file.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
        self.file.attrs["format_version"] = FORMAT_VERSION

    def append(self, images: np.ndarray, labels: np.ndarray) -> None:
        end = self.filled + len(images)
        self.images[self.filled:end] = images
        self.labels[self.filled:end] = labels
        self.filled = end

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()
        if exc[0] is None and self.filled != self.n:
            raise RuntimeError(f"store writer filled {self.filled} of {self.n} rows")


def resolve_options(name: str, options: dict | None) -> dict:
    """Options with defaults filled in; InputError for an unknown key or a bad value."""
    defaults = DEFAULT_OPTIONS[name]
    options = dict(options or {})
    for key in options:
        if key not in defaults:
            valid = ", ".join(sorted(defaults)) or "none"
            raise InputError(f"unknown option '{key}' for dataset '{name}'; valid options: {valid}")
    opts = {**defaults, **options}
    for key in ("seed", "patch_size", "stride", "region_size"):
        value = opts.get(key)
        if key in opts and value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                                  or (key != "seed" and value < 1)):
            raise InputError(f"option {key} must be a {'' if key == 'seed' else 'positive '}integer, got {value!r}")
    if "split_fractions" in opts:
        opts["split_fractions"] = _check_fractions(opts["split_fractions"])
    if name == "nct_crc_he" and not _is_number(opts["valid_fraction"], 0, 1, closed=False):
        raise InputError(f"option valid_fraction must be in (0, 1), got {opts['valid_fraction']!r}")
    if name == "demo":
        opts["stride"] = opts["stride"] or opts["patch_size"]
        if opts["region_size"] < opts["patch_size"]:
            raise InputError(f"option region_size ({opts['region_size']}) must be >= patch_size "
                             f"({opts['patch_size']}): patches are cut inside one region")
        if not _is_number(opts["min_tissue"], 0, 1, closed=True):
            raise InputError(f"option min_tissue must be in [0, 1], got {opts['min_tissue']!r}")
    if name == "folder":
        if not opts["root"]:
            raise InputError("dataset 'folder' needs option root: the folder with one sub-folder per class")
        opts["root"] = str(opts["root"])
        if opts["split_files"] is not None:
            if not isinstance(opts["split_files"], dict) or set(opts["split_files"]) != set(SPLITS):
                raise InputError(f"option split_files must map exactly {list(SPLITS)} to text files, "
                                 f"got {opts['split_files']!r}")
            if "split_fractions" in options:
                raise InputError("options split_files and split_fractions exclude each other: "
                                 "give the split lists or the fractions, not both")
            opts["split_files"] = {s: str(opts["split_files"][s]) for s in SPLITS}
    return opts


def _is_number(value, lo, hi, closed: bool) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return lo <= value <= hi if closed else lo < value < hi


def _check_fractions(fractions) -> dict:
    if not isinstance(fractions, dict) or set(fractions) != set(SPLITS):
        raise InputError(f"option split_fractions must have exactly the keys {list(SPLITS)}, got {fractions!r}")
    values = [fractions[s] for s in SPLITS]
    if not all(_is_number(v, 0, 1, closed=False) for v in values) or abs(sum(values) - 1) > 1e-6:
        raise InputError(f"option split_fractions must be in (0, 1) and sum to 1, got {fractions!r}")
    return {s: float(fractions[s]) for s in SPLITS}


def _select_classes(available: list[str], classes: list[str] | None, where) -> list[str]:
    """The kept class names in label order; every requested class must exist."""
    if classes is None:
        return list(available)
    if len(set(classes)) != len(classes):
        raise InputError(f"classes {classes} name a class twice")
    for c in classes:
        if c not in available:
            raise InputError(f"class '{c}' is not in {where}; available classes: {available}")
    return list(classes)


def resize_images(images: np.ndarray, size: int | None) -> np.ndarray:
    """Antialiased LANCZOS resize of a batch to size x size (PIL); None or native size = unchanged."""
    if size is None or images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.LANCZOS))
    return out


def _stratified_split(labels: np.ndarray, fractions: dict, seed: int) -> dict[str, np.ndarray]:
    """Sorted row indices per split; each class divided by the fractions (largest remainder), seeded.

    A class with at least one image per split puts at least one in each split.
    """
    rng = np.random.default_rng(seed)
    names = list(fractions)
    parts = {s: [] for s in names}
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        exact = np.array([fractions[s] for s in names]) * len(members)
        sizes = np.floor(exact).astype(int)
        leftover = len(members) - sizes.sum()
        sizes[np.argsort(sizes - exact, kind="stable")[:leftover]] += 1
        if len(members) >= len(names):  # a small class still reaches every split
            for empty in np.flatnonzero(sizes == 0):
                sizes[np.argmax(sizes)] -= 1
                sizes[empty] += 1
        for s, chunk in zip(names, np.split(members, np.cumsum(sizes)[:-1])):
            parts[s].append(chunk)
    return {s: np.sort(np.concatenate(parts[s])) if parts[s] else np.zeros(0, np.int64) for s in names}


def load_rgb(path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except UNREADABLE_IMAGE as e:
        raise InputError(f"{path}: not a readable image ({e})") from e


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _list_digest(paths) -> str:
    """sha256 of the list of <folder>/<file> names: which files went in, in a short attribute
    (HDF5 attributes are limited to 64 kB, too small for 100,000 names)."""
    return hashlib.sha256("\n".join(f"{p.parent.name}/{p.name}" for p in paths).encode()).hexdigest()


def _write_files(path, files: list[Path], labels: np.ndarray, class_names, image_size, provenance, desc,
                 reference=None) -> tuple[Path, tuple[int, int]]:
    """Load image files in blocks (RGB, checked size, optional resize) into a store.

    Without image_size every image must have the size of `reference` (file, (h, w)),
    by default the first file; returns the reference so later splits are held to it.
    """
    if reference is None:
        reference = (files[0], load_rgb(files[0]).shape[:2])
    ref_file, (h, w) = reference
    shape = (image_size, image_size, 3) if image_size else (h, w, 3)
    step = 1024
    with _StoreWriter(path, len(files), shape, class_names, provenance) as writer:
        for lo in tqdm(range(0, len(files), step), desc=desc, unit="block"):
            block = []
            for f in files[lo:lo + step]:
                img = load_rgb(f)
                if image_size is None and img.shape[:2] != (h, w):
                    raise InputError(f"{f}: image is {img.shape[1]}x{img.shape[0]} px, expected {w}x{h} like "
                                     f"{ref_file} (or set image_size to resize all images to one size)")
                block.append(resize_images(img[None], image_size)[0])
            writer.append(np.stack(block), labels[lo:lo + step])
    return reference


# ---------------------------------------------------------------------------
# PatchCamelyon


def _prepare_pcam(raw_dir: Path, stage, classes, image_size, opts, base) -> dict:
    keep = _select_classes(PCAM_CLASSES, classes, "PCam (labels 0 = normal, 1 = tumor)")
    new_label = np.array([keep.index(c) if c in keep else -1 for c in PCAM_CLASSES])
    counts = {}
    for split in SPLITS:
        x_path, y_path = (raw_dir / PCAM_FILE.format(split=split, xy=xy) for xy in "xy")
        with _open_h5(x_path) as fx, _open_h5(y_path) as fy:
            x = _h5_key(fx, "x", x_path)
            y = _read_pcam_labels(_h5_key(fy, "y", y_path), y_path)
            if x.dtype != np.uint8 or x.shape[1:] != (PCAM_SIZE, PCAM_SIZE, 3):
                raise InputError(f"{x_path}: key 'x' must be uint8 (N, {PCAM_SIZE}, {PCAM_SIZE}, 3), "
                                 f"got {x.dtype} {x.shape}")
            if len(y) != x.shape[0]:
                raise InputError(f"{x_path} has {x.shape[0]} images but {y_path} has {len(y)} labels")
            labels = new_label[y]
            size = image_size or PCAM_SIZE
            provenance = {**base, "split": split, "source_files": [str(x_path), str(y_path)]}
            with _StoreWriter(stage(f"{split}.h5"), int((labels >= 0).sum()), (size, size, 3), keep,
                              provenance) as writer:
                for lo in tqdm(range(0, len(y), BLOCK), desc=f"pcam {split}", unit="block"):
                    kept = labels[lo:lo + BLOCK] >= 0
                    try:
                        block = x[lo:lo + BLOCK]
                    except OSError as e:  # truncated or corrupt chunks surface only on read
                        raise InputError(f"{x_path}: failed reading rows {lo}..{lo + BLOCK} ({e}); "
                                         f"the file is corrupt, download it again") from e
                    writer.append(resize_images(block[kept], image_size), labels[lo:lo + BLOCK][kept])
        counts[split] = {c: int((labels == i).sum()) for i, c in enumerate(keep)}
    return counts


def _open_h5(path: Path) -> h5py.File:
    if not path.exists():
        raise InputError(f"{path}: PCam file not found (expected the downloaded, decompressed .h5)")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path}: not a readable HDF5 file ({e}); it is truncated or corrupt, "
                         f"download it again") from e


def _h5_key(f: h5py.File, key: str, path) -> h5py.Dataset:
    if key not in f:
        raise InputError(f"{path}: missing key '{key}' (found {list(f.keys())})")
    return f[key]


def _read_pcam_labels(y: h5py.Dataset, path) -> np.ndarray:
    try:
        labels = y[()]
    except OSError as e:
        raise InputError(f"{path}: failed reading key 'y' ({e}); the file is corrupt, download it again") from e
    if labels.ndim == 0 or labels.size != labels.shape[0]:
        raise InputError(f"{path}: key 'y' must have shape (N, 1, 1, 1), got {y.shape}")
    labels = labels.reshape(-1)
    bad = ~np.isin(labels, [0, 1])
    if bad.any():
        raise InputError(f"{path}: labels must be 0 (normal) or 1 (tumor), found {np.unique(labels[bad])[:5]}")
    return labels.astype(np.int64)


# ---------------------------------------------------------------------------
# NCT-CRC-HE-100K (train, valid) + CRC-VAL-HE-7K (test)


def _prepare_nct(raw_dir: Path, stage, classes, image_size, opts, base) -> dict:
    trees = {}
    for split, dirname in NCT_DIRS.items():
        root = raw_dir / dirname
        if not root.is_dir():
            raise InputError(f"{root}: NCT-CRC-HE folder not found (expected {raw_dir}/{dirname}/<CLASS>/*.tif)")
        trees[split] = root
    available = sorted(p.name for p in trees["train"].iterdir() if p.is_dir())
    keep = _select_classes(available, classes, str(trees["train"]))
    files, labels = {}, {}
    for split, root in trees.items():
        files[split], labels[split] = _class_files(root, keep)
    parts = _stratified_split(labels["train"], {"train": 1 - opts["valid_fraction"], "valid": opts["valid_fraction"]},
                              opts["seed"])
    split_rows = {"train": ("train", parts["train"]), "valid": ("train", parts["valid"]),
                  "test": ("test", np.arange(len(files["test"])))}
    return _write_splits(stage, split_rows, files, labels, keep, image_size, base, "nct_crc_he",
                         {s: str(trees[src]) for s, (src, _) in split_rows.items()})


def _class_files(root: Path, keep: list[str]) -> tuple[list[Path], np.ndarray]:
    files, labels = [], []
    for i, c in enumerate(keep):
        folder = root / c
        if not folder.is_dir():
            raise InputError(f"{folder}: class folder not found (classes {keep} must all be in {root})")
        found = image_files(folder)
        if not found:
            raise InputError(f"{folder}: class folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += found
        labels += [i] * len(found)
    return files, np.array(labels, dtype=np.int64)


def _write_splits(stage, split_rows, files, labels, keep, image_size, base, desc, sources) -> dict:
    """Write each split from (source list, row indices); all splits must share the first image's size."""
    reference = None
    counts = {}
    for split in SPLITS:
        src, rows = split_rows[split]
        split_files = [files[src][i] for i in rows]
        if not split_files:
            raise InputError(f"split '{split}' would hold no images (source: {sources[split]})")
        provenance = {**base, "split": split, "source_files": [sources[split]], "n_files": len(split_files),
                      "file_list_sha256": _list_digest(split_files)}
        reference = _write_files(stage(f"{split}.h5"), split_files, labels[src][rows], keep, image_size,
                                 provenance, f"{desc} {split}", reference)
        counts[split] = {c: int((labels[src][rows] == i).sum()) for i, c in enumerate(keep)}
    return counts


# ---------------------------------------------------------------------------
# Demo: two real H&E images, spatially disjoint regions


def _prepare_demo(raw_dir: Path, stage, classes, image_size, opts, base) -> dict:
    from histosynth.data import tissue  # scipy.ndimage: 0.3 s that every Snakemake start would pay

    keep = _select_classes(list(DEMO_FILES), classes, "the demo data")
    patches = {s: [] for s in SPLITS}
    labels = {s: [] for s in SPLITS}
    grid = {}
    for label, c in enumerate(keep):
        path = raw_dir / DEMO_FILES[c]
        image = _load_largest_page(path)
        by_split = tissue.grid_patches(image, tissue.tissue_mask(image), opts["patch_size"], opts["stride"],
                                       opts["region_size"], opts["split_fractions"], opts["min_tissue"],
                                       opts["seed"])
        empty = [s for s in SPLITS if len(by_split[s][0]) == 0]
        if empty:
            raise InputError(f"{path}: no tissue patches for split(s) {empty} with region_size "
                             f"{opts['region_size']}, patch_size {opts['patch_size']}, min_tissue "
                             f"{opts['min_tissue']}; need >= 3 tissue regions (lower region_size or min_tissue)")
        for s in SPLITS:
            patches[s].append(by_split[s][0])
            labels[s].append(np.full(len(by_split[s][0]), label, np.int64))
        grid[c] = {"source": str(path), "image_hw": list(image.shape[:2]),
                   "regions": {s: len(np.unique(by_split[s][1][:, :2] // opts["region_size"], axis=0))
                               for s in SPLITS},
                   "patches": {s: len(by_split[s][1]) for s in SPLITS}}
        tissue.plot_regions(stage(f"demo_regions_{c}.png"), image, by_split, opts["region_size"],
                            title=f"{c}: {path.name} ({opts['region_size']} px regions, "
                                  f"{opts['patch_size']} px patches, stride {opts['stride']})")
    counts = {}
    for s in SPLITS:
        y = np.concatenate(labels[s])
        provenance = {**base, "split": s, "source_files": [g["source"] for g in grid.values()], "grid": grid}
        write_store(stage(f"{s}.h5"), resize_images(np.concatenate(patches[s]), image_size), y, keep, provenance)
        counts[s] = {c: int((y == i).sum()) for i, c in enumerate(keep)}
    return counts


def _load_largest_page(path: Path) -> np.ndarray:
    """RGB pixels of the largest page (an .svs also holds thumbnail, label and macro pages)."""
    if not path.exists():
        raise InputError(f"{path}: demo image not found (run the `download` stage)")
    try:
        with Image.open(path) as im:
            areas = []
            for page in range(getattr(im, "n_frames", 1)):
                im.seek(page)
                areas.append(im.size[0] * im.size[1])
            im.seek(int(np.argmax(areas)))
            return np.asarray(im.convert("RGB"))
    except UNREADABLE_IMAGE as e:
        raise InputError(f"{path}: not a readable image ({e})") from e


# ---------------------------------------------------------------------------
# Folder: the user's own images, root/<class>/...


def _prepare_folder(raw_dir: Path, stage, classes, image_size, opts, base) -> dict:
    root = Path(opts["root"])
    if not root.is_dir():
        raise InputError(f"option root: {root} is not a folder (expected <root>/<class>/*.png)")
    available = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not available:
        raise InputError(f"{root}: no class sub-folders (expected <root>/<class>/*.png)")
    keep = _select_classes(available, classes, str(root))
    if opts["split_files"] is None:
        files, labels = _class_files(root, keep)
        rows = _stratified_split(labels, opts["split_fractions"], opts["seed"])
        split_rows = {s: ("all", rows[s]) for s in SPLITS}
        return _write_splits(stage, split_rows, {"all": files}, {"all": labels}, keep, image_size, base,
                             "folder", {s: str(root) for s in SPLITS})
    for c in keep:
        if not image_files(root / c):
            raise InputError(f"{root / c}: class folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    files, labels, sources, seen = {}, {}, {}, {}
    for split in SPLITS:
        list_path = _find_split_file(opts["split_files"][split], root, split)
        files[split], labels[split] = _read_split_file(list_path, root, keep, available, seen, split)
        sources[split] = str(list_path)
    return _write_splits(stage, {s: (s, np.arange(len(files[s]))) for s in SPLITS}, files, labels, keep,
                         image_size, base, "folder", sources)


def _find_split_file(name, root: Path, split: str) -> Path:
    """A split file as given (absolute or relative to the working directory), else relative to root."""
    for candidate in (Path(name), root / name):
        if candidate.is_file():
            return candidate
    raise InputError(f"split_files.{split}: {name} not found (looked in the working directory and in {root})")


def _read_split_file(list_path: Path, root: Path, keep, available, seen: dict, split: str):
    """Image paths and labels listed in a split file; classes not kept are skipped."""
    files, labels = [], []
    for lineno, line in enumerate(list_path.read_text().splitlines(), 1):
        rel = line.strip()
        if not rel or rel.startswith("#"):
            continue
        cls = Path(rel).parts[0]
        if cls not in available or len(Path(rel).parts) < 2:
            raise InputError(f"{list_path}:{lineno}: '{rel}' does not start with a class folder of {root} "
                             f"(available classes: {available})")
        path = root / rel
        if not path.is_file():
            raise InputError(f"{list_path}:{lineno}: listed image {path} does not exist")
        if path.resolve() in seen:
            raise InputError(f"{list_path}:{lineno}: {rel} is already in split '{seen[path.resolve()]}'; "
                             f"an image may be in one split only")
        seen[path.resolve()] = split
        if cls in keep:
            files.append(path)
            labels.append(keep.index(cls))
    return files, np.array(labels, dtype=np.int64)
