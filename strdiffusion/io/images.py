"""Reading images and masks from disk, and grouping images of equal size into batches.

- Images on disk are 8-bit RGB (PNG, JPEG, ...); in memory ``uint8`` HxWx3 arrays.
- Mask files: white (255) = HOLE, black (0) = known (:func:`read_mask` returns 1 = hole).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from strdiffusion.io.errors import UndecodableImage, UserError

# The file types read as images or masks everywhere (data folders, own photos, mask folders), lower case.
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


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
