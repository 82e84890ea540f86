"""Atomic output: a job killed half-way must never leave a file that looks finished."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Iterator


def temp_path_beside(path: str | os.PathLike) -> Path:
    """A fresh hidden temporary name in `path`'s directory; the file is not created.

    Not creating it (unlike mkstemp, which makes files 0600) lets the writer create
    it with the user's umask, so finished outputs are readable by the lab as usual.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only on success.

    The temporary file lives in the same directory so the final `os.replace` is an
    atomic rename on POSIX file systems. On any exception the temporary is removed
    and `path` is left untouched (an earlier finished file survives).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_history(path: str | os.PathLike, rows: list[dict]) -> None:
    """Per-epoch rows as a TSV: every key any row has, in first-seen order; floats to 6
    significant digits, a key a row lacks as nan."""
    cols = list(dict.fromkeys(k for row in rows for k in row))

    def cell(v):
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    write_text(path, "\t".join(cols) + "\n"
               + "".join("\t".join(cell(r.get(c, float("nan"))) for c in cols) + "\n" for r in rows))
