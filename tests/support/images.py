"""Image test helpers: synthetic photographs, noisy copies, prediction sets and image/mask pairs on disk."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def photo(size=64, seed=0):
    """A natural-looking uint8 RGB crop (skimage's bundled astronaut), slightly varied by seed."""
    from skimage.data import astronaut

    img = astronaut()
    y, x = (37 * seed) % 380, (53 * seed + 150) % 380
    return np.ascontiguousarray(img[y:y + size * 2:2, x:x + size * 2:2])


def noisy(img, sigma, seed):
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).round().astype(np.uint8)


def write_set(root: Path, n=8, size=64, bin_label="10-20"):
    """gt/ and pred/ folders of n PNGs and a pairs CSV with two bins; returns (pairs, gt, pred, gts, preds)."""
    gt_dir, pred_dir = root / "gt", root / "pred"
    gt_dir.mkdir(parents=True)
    pred_dir.mkdir(parents=True)
    gts, preds, rows = [], [], []
    for i in range(n):
        gt = photo(size, seed=i)
        pred = noisy(gt, 12 + 2 * i, seed=100 + i)
        Image.fromarray(gt).save(gt_dir / f"img{i:03d}.png")
        Image.fromarray(pred).save(pred_dir / f"img{i:03d}.png")
        gts.append(gt)
        preds.append(pred)
        rows.append({"image_id": f"img{i:03d}", "bin": bin_label, "mask": f"masks/m{i}.png"})
    rows.append({"image_id": "other", "bin": "40-50", "mask": "masks/x.png"})  # another bin: ignored
    pairs = root / "pairs.csv"
    pd.DataFrame(rows).to_csv(pairs, index=False)
    return pairs, gt_dir, pred_dir, gts, preds


def write_pair(folder: Path, name="x", size=(29, 37), hole=(slice(8, 20), slice(10, 25))):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    mask = np.zeros(size, np.uint8)
    mask[hole] = 255
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{name}.png")
    Image.fromarray(mask).save(folder / f"{name}_mask.png")
    return image, mask, folder / f"{name}.png", folder / f"{name}_mask.png"
