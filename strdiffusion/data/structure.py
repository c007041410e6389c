"""Structure extraction: grayscale and Canny edge map of an RGB image.

The reference turns the float RGB tensor into uint8 with torchvision's ``ToPILImage`` (multiply
by 255 and TRUNCATE), takes ``skimage.color.rgb2gray`` of that and ``skimage.feature.canny(gray,
sigma)``. We reproduce that chain exactly (``structure_maps``), so edge maps equal the
reference's bit for bit. Canny sigma is 3.0 in the reference's training code and 2.0 at test.

Output (``--out DIR``): ``DIR/gray/<id>.png`` (16-bit, gray * 65535) and ``DIR/edge/<id>.png``
(8-bit, 255 = edge).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

from strdiffusion.io.errors import UserError
from strdiffusion.io.files import atomic_dir, save_png_atomic
from strdiffusion.io.images import read_image_rgb

log = logging.getLogger("strdiffusion.data.structure")


def truncate_to_uint8(rgb: np.ndarray | torch.Tensor) -> np.ndarray:
    """float RGB in [0, 1] (HxWx3 array or 3xHxW tensor) -> uint8 HxWx3 by ``x*255`` truncation."""
    torch = sys.modules.get("torch")  # a tensor means torch is loaded; an array never needs it
    if torch is not None and isinstance(rgb, torch.Tensor):
        t = rgb.detach().to("cpu", torch.float32)
        if t.ndim == 3 and t.shape[0] in (1, 3):
            t = t.permute(1, 2, 0)
        return t.mul(255).byte().numpy()
    return (np.asarray(rgb, dtype=np.float32) * np.float32(255)).astype(np.uint8)


def structure_maps(rgb, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (gray float64 in [0, 1], edge float32 0/1), both HxW.

    ``rgb`` is either uint8 HxWx3 (used as is) or float in [0, 1] (HxWx3 array or 3xHxW tensor),
    which first goes through the reference's truncating uint8 conversion.
    """
    from skimage.color import rgb2gray
    from skimage.feature import canny

    img = rgb if isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 else truncate_to_uint8(rgb)
    gray = rgb2gray(img)
    edge = canny(gray, sigma=sigma).astype(np.float32)
    return gray, edge


def image_structure(img_uint8: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Structure of an image read from disk the way the reference reads it (uint8 -> float32/255)."""
    return structure_maps(img_uint8.astype(np.float32) / np.float32(255), sigma)


def save_gray(path, gray: np.ndarray) -> None:
    save_png_atomic(path, np.round(np.clip(gray, 0, 1) * 65535).astype(np.uint16))


def load_gray(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im, dtype=np.float64) / 65535.0


def extract(images_dir: Path, out: Path, sigma: float) -> int:
    """Write gray and edge maps for every PNG in ``images_dir`` into ``out`` (atomically as a folder)."""
    images_dir, out = Path(images_dir), Path(out)
    files = sorted(images_dir.glob("*.png"))
    if not files:
        raise UserError(f"{images_dir}: no PNG images to extract structure from; run the data stage first")
    with atomic_dir(out) as tmp:
        for f in files:
            gray, edge = image_structure(read_image_rgb(f), sigma)
            save_gray(tmp / "gray" / f.name, gray)
            save_png_atomic(tmp / "edge" / f.name, (edge * 255).astype(np.uint8))
    log.info("structure of %d images (Canny sigma %.2f) -> %s", len(files), sigma, out)
    return len(files)
