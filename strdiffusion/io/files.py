"""Atomic writes: a file or folder appears complete under its final name or not at all; file hashes.

A write goes to a temporary name beside its target and is renamed onto it at the end, so a killed job
never leaves a half-written output; a full disk becomes one line naming the folder (:mod:`strdiffusion.io.errors`).
"""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from strdiffusion.io.errors import DiskFullError, _full_after_write_error, is_disk_full


@functools.cache
def _umask() -> int:
    """The process umask, read once (reading it means setting it, which other threads must not see twice)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path in the same folder as ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed, so ``path`` is never half-written.
    ``suffix`` defaults to the target's suffix so that writers that dispatch on the extension work.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix,
                                   dir=path.parent)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(path, exc.errno) from None
        raise
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results must read like any file the user writes
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        full = is_disk_full(exc) or _full_after_write_error(exc, path.parent)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if full:
            raise DiskFullError(path, getattr(exc, "errno", None) or errno.ENOSPC) from None
        raise


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a fresh temporary folder beside ``path``; on success it replaces ``path`` whole.

    On any exception the temporary folder is removed and an existing ``path`` is left as it was,
    so a folder output is either complete or absent (never half-written).
    """
    import shutil

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(path, exc.errno) from None
        raise
    try:
        yield tmp
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        tmp.rename(path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, DiskFullError) or is_disk_full(exc):  # name the output, not a temporary file in it
            raise DiskFullError(path, exc.errno) from None
        raise


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_csv_atomic(df, path) -> None:
    """Write a pandas DataFrame as CSV atomically (no index)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def save_png_atomic(path, array: np.ndarray) -> None:
    """Save a uint8 (HxW or HxWx3) or uint16 (HxW) array as PNG atomically."""
    from PIL import Image

    array = np.asarray(array)
    if array.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"save_png_atomic expects uint8/uint16, got {array.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def status_path(out) -> Path:
    """Sidecar of an output CSV: ``per_image.csv`` -> ``per_image.status.json``."""
    return Path(out).with_suffix(".status.json")


_CHUNK = 1 << 20


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
