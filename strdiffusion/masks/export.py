"""The export stage: a data set's test pairs, bin by bin, in the layouts other inpainting codes read.

``strdiffusion export --pairs PAIRS --gt-dir GT --out DIR`` writes, for every pair of the pairs CSV:

- ``DIR/lama/<bin>/<image_id>.png`` beside ``DIR/lama/<bin>/<image_id>_mask.png`` (white = hole): the
  layout of LaMa's ``bin/predict.py`` (``indir=DIR/lama/``); it writes ``<outdir>/<bin>/<image_id>_mask.png``;
- ``DIR/keep_white/<bin>/images/<image_id>.png`` and ``.../masks/<image_id>.png`` (white = KNOWN, black =
  hole), as RePaint's ``gt_keep_masks`` and IR-SDE's inpainting masks;
- ``DIR/plain/<bin>/images/<image_id>.png`` and ``.../masks/<image_id>.png`` (white = hole);
- ``DIR/manifest.csv``: ``image_id, bin, mask, hole_ratio`` (``mask``: the pair's mask file as the pairs CSV
  names it; ``hole_ratio``: share of hole pixels of the exported mask, ``bins.hole_ratio``).

The pairs CSV names its masks relative to the folder the run works in, which holds its ``results/``: run from
another folder, the stage reads them from there (the folder above the ``results/`` that holds the pairs CSV), or
from ``--root``. A mask that is not there is a one-line error naming it.

Images are the ground-truth test images, byte for byte (the outside code masks them itself, as it does on
its own benchmarks); masks are binarised at 128 like every mask the pipeline reads. The folder is written
beside DIR and renamed onto it at the end, so a killed job leaves no half export.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from strdiffusion.io.errors import UserError
from strdiffusion.io.files import atomic_dir, save_png_atomic, write_csv_atomic
from strdiffusion.io.images import read_image_rgb, read_mask
from strdiffusion.io.pairs import read_pairs_with_masks
from strdiffusion.masks.bins import hole_ratio

log = logging.getLogger("strdiffusion.masks.export")

LAYOUTS = ("lama", "keep_white", "plain")
MANIFEST = "manifest.csv"


def layout_paths(root: Path, bin_name: str, image_id: str) -> dict[str, Path]:
    """Where the image and the masks of one pair go in each layout (keys ``<layout>_image``, ``<layout>_mask``)."""
    root = Path(root)
    paths = {"lama_image": root / "lama" / bin_name / f"{image_id}.png",
             "lama_mask": root / "lama" / bin_name / f"{image_id}_mask.png"}
    for layout in ("keep_white", "plain"):
        paths[f"{layout}_image"] = root / layout / bin_name / "images" / f"{image_id}.png"
        paths[f"{layout}_mask"] = root / layout / bin_name / "masks" / f"{image_id}.png"
    return paths


def export_pairs(pairs_csv, gt_dir, out, root=None) -> pd.DataFrame:
    """Write every pair of ``pairs_csv`` in the three layouts under ``out``; return the manifest. Relative mask paths
    of ``pairs_csv`` are read from ``root`` (default: :func:`strdiffusion.io.pairs.run_root`)."""
    pairs = read_pairs_with_masks(pairs_csv, root)
    gt_dir = Path(gt_dir)
    rows = []
    with atomic_dir(out) as tmp:
        for pair in pairs.itertuples():
            image_path = gt_dir / f"{pair.image_id}.png"
            if not image_path.is_file():
                raise UserError(f"{image_path}: test image of pair '{pair.image_id}' not found; run the data stage")
            height, width = read_image_rgb(image_path).shape[:2]
            hole = read_mask(pair.mask_file, size=(height, width)) < 0.5
            white_hole = hole.astype(np.uint8) * 255
            paths = layout_paths(tmp, pair.bin, pair.image_id)
            for layout in LAYOUTS:
                paths[f"{layout}_image"].parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(image_path, paths[f"{layout}_image"])
            save_png_atomic(paths["lama_mask"], white_hole)
            save_png_atomic(paths["plain_mask"], white_hole)
            save_png_atomic(paths["keep_white_mask"], 255 - white_hole)
            rows.append(dict(image_id=pair.image_id, bin=pair.bin, mask=pair.mask, hole_ratio=hole_ratio(hole)))
        manifest = pd.DataFrame(rows, columns=["image_id", "bin", "mask", "hole_ratio"])
        write_csv_atomic(manifest, tmp / MANIFEST)
    log.info("exported %d pairs in %d bins (%s) -> %s", len(manifest), manifest["bin"].nunique(),
             ", ".join(LAYOUTS), out)
    return manifest
