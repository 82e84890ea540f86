"""What every rule's script runs inside: `with job(snakemake) as smk: <one package call>`.

The job's output goes to the terminal and to the rule's log; torch (when the script
imported it) gets the job's thread count; a job declaring `resources: gpu=N` takes N
GPUs no other job holds; and failures end the job with one clear line for a user's
mistake or a full disk, a traceback for a bug. Nothing here computes a number, so
code provenance (histosynth.provenance) does not follow it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import traceback

from histosynth.errors import InputError


class _Tee:
    """Write to the terminal and the rule's log file at once."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, data):
        for s in self.streams:
            s.write(data)
        return len(data)

    def flush(self):
        for s in self.streams:
            s.flush()

    def isatty(self):
        return False


@contextlib.contextmanager
def _gpu_slot(smk):
    """A job declaring `resources: gpu=N` gets N GPUs no other job holds (gpu_slots.py).

    With no CUDA device it runs on CPU only if the config's `allow_cpu` says so
    (read here, not passed as a param, so changing it never reruns a job).
    """
    n = int(smk.resources.get("gpu", 0) or 0)
    if n <= 0:
        yield
        return
    from histosynth.gpu_slots import gpu_slots

    with gpu_slots(n) as ids:
        if ids:
            print(f"GPU slot: CUDA_VISIBLE_DEVICES={','.join(ids)}", flush=True)
        elif smk.config.get("allow_cpu", False):
            print("GPU slot: no CUDA device found; running on CPU (allow_cpu: true)", flush=True)
        else:
            raise InputError(f"this job wants a GPU (resources gpu={n}) but no CUDA device was found; "
                             "set `allow_cpu: true` in your config to run it on CPU (very slow at "
                             "paper scale), or run on a machine with a GPU")
        yield


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}


def _storage_error(e: OSError) -> bool:
    # HDF5 reports a full disk as a plain OSError whose message carries the errno text.
    return e.errno in _STORAGE_ERRNOS or "No space left on device" in str(e)


def _fail(smk, message: str | None = None):
    if message is None:
        traceback.print_exc()
    else:
        print(f"histosynth {smk.rule}: error: {message}", file=sys.stderr)
    sys.stderr.flush()
    raise SystemExit(1)


@contextlib.contextmanager
def job(smk):
    """Log to the rule's log, cap torch's threads, hold the job's GPUs; clean errors."""
    log_path = smk.log[0] if len(smk.log) else os.devnull
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    # Line-buffered: `tail -f` follows a days-long training as it goes.
    with open(log_path, "w", buffering=1) as log, \
            contextlib.redirect_stdout(_Tee(sys.stdout, log)), \
            contextlib.redirect_stderr(_Tee(sys.stderr, log)):
        try:
            if "torch" in sys.modules:  # only stages that use it import it (seconds per job)
                sys.modules["torch"].set_num_threads(smk.threads)
            with _gpu_slot(smk):
                yield smk
        except InputError as e:
            _fail(smk, str(e))  # a user mistake: one clear line, no traceback noise
        except OSError as e:
            if not _storage_error(e):
                _fail(smk)
            # Full disk, quota, read-only or unwritable output directory: the machine's state, not a bug.
            _fail(smk, f"cannot write {e.filename or 'an output'}: {e.strerror or e}. Nothing half-written was "
                       "kept (outputs are renamed into place only when complete) and finished stages are "
                       "untouched: free space or fix the directory, then run snakemake again.")
        except Exception:
            _fail(smk)
