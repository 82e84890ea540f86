"""Synthetic images made elsewhere, evaluated like a generator trained here (`family: external`).

A lab's own generator (a Stable Diffusion fine-tune, a StyleGAN, a commercial model) or a
published set, such as the latent-diffusion paper's (Zenodo record 13928371:
<generator>/<filter>/<subset>/<class>/*.png), becomes one subset's pool (rule
import_external), and everything downstream of a pool (filters, quality, memorisation,
classifier strategies, tables, report) runs on it unchanged. Per subset, `path` (with
`{subset}` standing for the subset index; without it every subset gets the same images)
names either

* a folder with one sub-folder of png/jpg/tif images per class, or
* an HDF5 file in the canonical store layout (histosynth.data.store).

The set's class names are mapped to the dataset's by `classes` ({its name: the dataset's,
or null to leave that class out}; names not listed are the dataset's own). Images are
resized to the dataset's image size with the resizer `prepare` used for the real data.

Provenance is by content: the import's params carry a digest of the images' bytes (per
class, independent of file names and location), so replacing an image reruns that
generator's branch and moving the folder reruns nothing. Hashes are cached per file by
(path, size, mtime) so a start-up re-reads only what changed, as git's index does.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from histosynth.errors import InputError

HDF5_SUFFIXES = (".h5", ".hdf5")


@dataclass(frozen=True)
class Source:
    """One subset's external images, as found: a folder's files per dataset class, or a store's rows."""

    name: str  # the generator entry (generator.<name>)
    path: Path  # the class folders' parent, or the .h5 file
    classes: dict = field(default_factory=dict)  # the set's class name -> the dataset's (None: left out)
    files: dict[str, list[Path]] | None = None  # folder: dataset class -> its image files, sorted
    rows: dict[str, np.ndarray] | None = None  # store: dataset class -> its row indices

    @property
    def counts(self) -> dict[str, int]:
        return {c: len(v) for c, v in (self.files if self.files is not None else self.rows).items()}


def source_path(template: str, subset: int) -> Path:
    """`path` of subset `subset`: `{subset}` replaced by its index (no other braces are read)."""
    return Path(str(template).replace("{subset}", str(subset)))


def scan(name: str, template: str, subset: int, classes: dict | None, dataset_classes: list[str] | None) -> Source:
    """The external images of one subset, checked: the folder or store exists, every class of the
    set maps to a class of the dataset (`dataset_classes`, None when not yet known), no class is
    empty and every dataset class has images. InputError naming the key and the path otherwise."""
    from histosynth.data.prepare import IMAGE_SUFFIXES, image_files

    path, classes = source_path(template, subset), dict(classes or {})
    where = f"generator.{name}.path"
    if path.suffix.lower() in HDF5_SUFFIXES:
        from histosynth.data.store import read_labels, store_info

        if not path.is_file():
            raise InputError(f"{where}: {path} not found (expected an HDF5 store in the canonical layout: "
                             "images, labels, class_names)")
        info, labels = store_info(path), read_labels(path)
        by_class = {c: np.flatnonzero(labels == i) for i, c in enumerate(info.class_names)}
        have = list(by_class)
        rows = _map_classes(name, path, by_class, classes, dataset_classes, lambda c: f"class '{c}' of {path}")
        source = Source(name, path, classes, rows={c: np.sort(np.asarray(v, np.int64)) for c, v in rows.items()})
    else:
        if not path.is_dir():
            raise InputError(f"{where}: {path} is not a folder (expected {path}/<class>/*.png, one folder of "
                             "images per class, or an .h5 store)")
        folders = {p.name: p for p in sorted(path.iterdir()) if p.is_dir() and not p.name.startswith(".")}
        have = list(folders)
        if not folders:
            raise InputError(f"{where}: {path} holds no class folders (expected {path}/<class>/*.png)")
        found = {}
        for c, folder in folders.items():
            found[c] = image_files(folder) if classes.get(c, c) is not None else []  # left out: not even listed
            if not found[c] and classes.get(c, c) is not None:
                raise InputError(f"generator.{name}: {folder}: class folder holds no images "
                                 f"({', '.join(sorted(IMAGE_SUFFIXES))})")
        files = _map_classes(name, path, found, classes, dataset_classes, lambda c: f"class folder {path / c}")
        source = Source(name, path, classes, files={c: sorted(v) for c, v in files.items()})
    missing = [c for c in (dataset_classes or []) if c not in source.counts]
    unknown = sorted(set(classes) - set(have))
    typo = (f"generator.{name}.classes maps {', '.join(map(repr, unknown))}, which {path} does not have (its "
            f"classes: {', '.join(map(repr, have))})") if unknown else ""
    if missing:
        raise InputError(f"generator.{name}: {path} has no images of class{'es' * (len(missing) > 1)} "
                         f"{', '.join(map(repr, missing))} (every class of the dataset needs some: a folder "
                         f"named after it, or one mapped to it by generator.{name}.classes)" + f"; {typo}" * bool(typo))
    if unknown:
        raise InputError(typo)
    return source


def _map_classes(name, path, by_class: dict, classes: dict, dataset_classes, what) -> dict:
    """{dataset class: the set's members (a list)} through the `classes` mapping, set classes mapped
    to one dataset class merged; every set class must land on a dataset class or be left out (null)."""
    out: dict = {}
    for c, members in by_class.items():
        target = classes.get(c, c)
        if target is None:
            continue
        if dataset_classes is not None and target not in dataset_classes:
            hint = (f"map it with generator.{name}.classes, e.g. {{'{c}': '{dataset_classes[0]}'}}, or leave it "
                    f"out with {{'{c}': null}}") if target == c else f"generator.{name}.classes maps it to '{target}'"
            raise InputError(f"generator.{name}: {what(c)} is not a class of the dataset "
                             f"({', '.join(dataset_classes)}): {hint}")
        if not len(members):
            raise InputError(f"generator.{name}: {what(c)} holds no images")
        out.setdefault(target, []).extend(members)
    return out


# ---------------------------------------------------------------------------
# Content digest (what the import's params carry)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cached_sha256(paths: list[Path], cache_path) -> list[str]:
    """sha256 of each file, re-read only when its (resolved path, size, mtime) is not in the cache
    at `cache_path` (a JSON file, rewritten atomically with exactly these files' entries)."""
    from histosynth.fileio import write_json

    cache_path = Path(cache_path)
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    fresh, out = {}, []
    # Only a large set's first start-up takes long enough to show.
    for p in tqdm(paths, desc=f"hashing for {cache_path.parent}", unit="file", disable=len(paths) < 1000):
        st = Path(p).stat()
        key = str(Path(p).resolve())
        entry = cache.get(key)
        if not (isinstance(entry, list) and entry[:2] == [st.st_size, st.st_mtime_ns]):
            entry = [st.st_size, st.st_mtime_ns, file_sha256(p)]
        fresh[key] = entry
        out.append(entry[2])
    if fresh != cache:
        write_json(cache_path, fresh)
    return out


def content_digest(source: Source, cache_path) -> str:
    """sha256 over the set's content per dataset class: the same for the same images under any file
    names and location, different when an image or the class mapping changes."""
    h = hashlib.sha256()
    if source.files is not None:
        classes = sorted(source.files)
        # One pass over every file: the cache keeps exactly the entries of the last call.
        digests = iter(cached_sha256([f for c in classes for f in source.files[c]], cache_path))
        for c in classes:
            for digest in sorted(next(digests) for _ in source.files[c]):
                h.update(f"{c}\t{digest}\n".encode())
    else:  # the store's bytes and how its classes map
        h.update(cached_sha256([source.path], cache_path)[0].encode())
        h.update(json.dumps(source.classes, sort_keys=True).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------
# The import stage


def _folder_images(source: Source, c: str, take, image_size: int):
    """The chosen images of class `c`: (images, [(relative file, sha256)]), chosen in content order,
    so the same images give the same pool wherever they live and whatever they are called."""
    from PIL import Image

    from histosynth.data.prepare import UNREADABLE_IMAGE, resize_images

    files = sorted((file_sha256(p), str(p.relative_to(source.path)))
                   for p in tqdm(source.files[c], desc=f"hash {c}", unit="file", mininterval=5))
    chosen = [files[i] for i in take(len(files))]
    images = np.empty((len(chosen), image_size, image_size, 3), np.uint8)
    for i, (digest, rel) in enumerate(tqdm(chosen, desc=f"read {c}", unit="image", mininterval=5)):
        data = (source.path / rel).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise InputError(f"{source.path / rel}: changed while the set was being imported; run again")
        try:
            with Image.open(io.BytesIO(data)) as im:
                rgb = np.asarray(im.convert("RGB"))
        except UNREADABLE_IMAGE as e:
            raise InputError(f"{source.path / rel}: not a readable image ({e})") from e
        images[i] = resize_images(rgb[None], image_size)[0]
    return images, [(rel, digest) for digest, rel in chosen]


def _store_images(source: Source, c: str, take, image_size: int):
    """The chosen rows of class `c` of an external store, resized: (images, [("row N", sha256 of its pixels)])."""
    from histosynth.data.prepare import resize_images
    from histosynth.data.store import read_store

    rows = source.rows[c][take(len(source.rows[c]))]
    images, _, _ = read_store(source.path, rows)
    if images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InputError(f"{source.path}: images must be uint8 RGB, got {images.dtype} {images.shape}")
    images = resize_images(images, image_size)
    return images, [(f"row {r}", hashlib.sha256(x.tobytes()).hexdigest()) for r, x in zip(rows, images)]


def import_selected(name: str, template: str, subset_index: int, classes: dict, train, subset, out_pool, out_grid,
                    out_sources, *, ratio: float, pool_factor: float, seed: int, set_sha256: str) -> dict:
    """Rule import_external: scan subset `subset_index`'s set against the dataset's classes (from the
    `train` store), then import_pool."""
    from histosynth.data.store import store_info

    source = scan(name, template, subset_index, classes, store_info(train).class_names)
    return import_pool(source, train, subset, out_pool, out_grid, out_sources, ratio=ratio, pool_factor=pool_factor,
                       seed=seed, set_sha256=set_sha256)


def import_pool(source: Source, train, subset, out_pool, out_grid, out_sources, *, ratio: float,
                pool_factor: float, seed: int, set_sha256: str | None = None) -> dict:
    """An external set's pool for one subset: per class i, pool_factor·r·N_i of its images (a seeded
    draw in content order; all of them when it has fewer), at the dataset's image size; the
    real-vs-synthetic grid; and sources.tsv, each pool image's source file and content hash.

    A class with fewer than the r·N_i images every filter keeps is an error: an external set
    cannot be sampled further."""
    from histosynth.data.split import read_subset
    from histosynth.data.store import read_store, write_store
    from histosynth.evaluation.draws import target_counts
    from histosynth.fileio import write_text
    from histosynth.generative.generate import save_grid

    real_images, real_labels, class_names = read_store(train, read_subset(subset))
    counts = source.counts
    image_size = real_images.shape[1]
    targets = target_counts(real_labels, len(class_names), ratio)
    rng = np.random.default_rng(seed)
    images, labels, rows = [], [], []
    for i, c in enumerate(class_names):
        have, need = counts.get(c, 0), targets[i]
        if have < need:
            raise InputError(f"generator.{source.name}: {source.path} has {have} images of class '{c}', fewer than "
                             f"the {need} (r·N_i, generation.ratio {ratio:g}) every filter keeps; an external set "
                             "cannot be sampled further: give more images or lower generation.ratio")
        cap = int(round(pool_factor * need))
        if have < cap:
            print(f"[import_external] {source.name}: class '{c}' has {have} images, fewer than the pool of {cap} "
                  f"(generation.pool_factor {pool_factor:g} × r·N_i) a trained generator gets: the whole set is "
                  "the pool, and filter 'selective' needs 4 × r·N_i")
        take = lambda n: np.sort(rng.permutation(n)[:cap])  # noqa: E731  (order kept: content order)
        x, src = (_folder_images if source.files is not None else _store_images)(source, c, take, image_size)
        images.append(x)
        labels.append(np.full(len(x), i, np.int64))
        rows += [(c, *s) for s in src]
    images, labels = np.concatenate(images), np.concatenate(labels)
    digest = hashlib.sha256("".join(f"{c}\t{h}\n" for c, _, h in sorted(rows)).encode()).hexdigest()
    provenance = {"external": source.name, "source": str(source.path), "kind": "folder" if source.files is not None
                  else "hdf5", "classes": source.classes, "available": counts, "seed": seed,
                  "counts": {c: int((labels == i).sum()) for i, c in enumerate(class_names)}, "pool_sha256": digest,
                  **({"set_sha256": set_sha256} if set_sha256 else {})}
    write_text(out_sources, "pool_index\tclass\tsource\tsha256\n"
               + "".join(f"{j}\t{c}\t{s}\t{h}\n" for j, (c, s, h) in enumerate(rows)))
    write_store(out_pool, images, labels, class_names, provenance)
    grid = {}
    for i, c in enumerate(class_names):
        grid[f"{c}, real"] = real_images[real_labels == i][:8]
        grid[f"{c}, external"] = images[labels == i][:8]
    save_grid(grid, out_grid, f"real vs external ({source.name}), {source.path}")
    print(f"[import_external] {source.name}: pool of {provenance['counts']} from {source.path} "
          f"({provenance['kind']}, {sum(counts.values())} images)")
    return provenance
