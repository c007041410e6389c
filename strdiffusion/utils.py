"""Shared I/O helpers: atomic writes, user-facing errors, image and mask reading.

Conventions used across the package:
- Images on disk are 8-bit RGB PNGs; in memory ``uint8`` HxWx3 arrays or float tensors in [0, 1].
- Mask files: white (255) = HOLE, black (0) = known. In memory ``mask`` is 1 on KNOWN pixels.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import tempfile
from pathlib import Path

import numpy as np

from .core.seeds import seed_for  # noqa: F401  (the pipeline's seeds are the model core's)


class UserError(Exception):
    """An error caused by the user's input (file, key, value). Printed as one line by the CLI."""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(UserError):
    """No space left (ENOSPC) or quota exceeded (EDQUOT) while writing ``path``."""

    def __init__(self, path, err: int = errno.ENOSPC):
        self.path, self.errno = Path(path), err
        super().__init__(disk_full_message(path, err))


def disk_full_message(path, err: int = errno.ENOSPC) -> str:
    return f"{path}: disk full ({os.strerror(err)}); free space and re-run"


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def _full_after_write_error(exc: BaseException, folder) -> bool:
    """torch.save reports ENOSPC as a RuntimeError ('file write failed', 'iostream error', 'unexpected
    pos'): on a RuntimeError while writing, a folder with under 1 MiB free is taken as full."""
    if not isinstance(exc, RuntimeError):
        return False
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


class UndecodableImage(UserError):
    """An image file that cannot be decoded; ``reason`` says why (without advice)."""

    def __init__(self, path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: cannot decode image ({reason}); "
                         "replace or remove the file, or set skip_bad_files: true")


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


def read_image_rgb(path) -> np.ndarray:
    """Decode any PIL-readable image to uint8 RGB (grayscale/RGBA/palette/16-bit/CMYK converted).

    Raises UserError naming the file when it cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(_to_rgb(im))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UndecodableImage(path, f"{exc.__class__.__name__}: {exc}") from None


def _to_rgb(im):
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im).astype(np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im)
        arr = np.clip(np.round(arr * (255.0 if arr.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


def read_mask(path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask file (white = hole) and return ``mask`` as float32 HxW, 1 = known, 0 = hole.

    ``size`` = (H, W): when given, the file must already have that size (a mismatch is an error
    naming both sizes). Binarised at 128 after grayscale conversion.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            gray = np.asarray(im.convert("L"))
    except FileNotFoundError:
        raise UserError(f"{path}: mask not found; check the path, or rerun the stage that writes it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: cannot decode mask ({exc.__class__.__name__}); replace the file") from None
    if size is not None and gray.shape != tuple(size):
        raise UserError(f"{path}: mask is {gray.shape[1]}x{gray.shape[0]} but the image is "
                        f"{size[1]}x{size[0]}; resize the mask (NEAREST) to the image size")
    return (gray < 128).astype(np.float32)


def bin_label(lo: float, hi: float) -> str:
    """Hole-ratio bin label, e.g. (0.1, 0.2) -> '10-20'."""
    return f"{round(lo * 100)}-{round(hi * 100)}"


def parse_bins(text: str) -> list[tuple[float, float]]:
    """Parse '0.1:0.2,0.2:0.3' into [(0.1, 0.2), (0.2, 0.3)], checking 0 <= lo < hi <= 1."""
    bins = []
    for part in text.split(","):
        try:
            lo, hi = (float(v) for v in part.split(":"))
        except ValueError:
            raise UserError(f"hole-ratio bin '{part}' is not of the form lo:hi (e.g. 0.1:0.2)") from None
        if not (0.0 <= lo < hi <= 1.0):
            raise UserError(f"hole-ratio bin {lo}:{hi} must satisfy 0 <= lo < hi <= 1")
        bins.append((lo, hi))
    return bins


def equal_size_runs(sizes, batch_size: int):
    """Index lists of at most ``batch_size`` consecutive items whose ``sizes[i]`` are equal, in order.

    The batches of the inpaint and metric stages: images of one size stack into one tensor.
    """
    start, n = 0, len(sizes)
    while start < n:
        stop = start + 1
        while stop < n and stop - start < batch_size and sizes[stop] == sizes[start]:
            stop += 1
        yield list(range(start, stop))
        start = stop
