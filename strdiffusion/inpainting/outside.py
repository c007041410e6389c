"""The import stage: an outside method's outputs of one bin, checked and scored like a built-in row's.

A method run by its own code (LaMa, MAT, RePaint, ...) on the exported test pairs (``strdiffusion export``)
is named in the config with a display name and a path template, e.g.
``lama: {name: LaMa, path: "resources/lama/{bin}/{image_id}_mask.png"}`` (placeholders ``{bin}``,
``{image_id}`` and optionally ``{dataset}``). ``strdiffusion import`` applies the one protocol of every row
to one bin of its outputs and writes them where the workflow's own rows put theirs
(``results/<dataset>/inpaint/<method>/<bin>/imported/<image_id>.png``), so the metric, table, figure and
report stages score it like any other row:

- known pixels are copied from the test image, as the inpaint stage does for every built-in row, unless
  ``as_is`` (the table footnotes which rows were composited and which were scored as delivered);
- an output of another size than its test image is an error naming the file and both sizes, unless
  ``resize`` names an interpolation (it is then resized to the test image's size);
- any format the imaging library reads is read alike (PNG, JPEG, ...): decoded to 8-bit RGB;
- a missing output is an error with the count and the first ids, unless ``allow_partial``: the row is then
  scored on the images it has (``imported.json`` lists the others; the table shows the row's image count);
- outputs whose known pixels differ from the input by more than JPEG noise in most images of a bin give a
  one-line warning naming the method and the bin: they were likely made for other masks or images.

The config's outside rows and where their outputs go: :mod:`strdiffusion.settings.external`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from strdiffusion.io.errors import UserError
from strdiffusion.io.files import atomic_dir, save_png_atomic, write_text_atomic
from strdiffusion.io.images import read_image_rgb, read_mask
from strdiffusion.io.pairs import read_pairs_with_masks
from strdiffusion.settings.external import RESIZE, SIDECAR

log = logging.getLogger("strdiffusion.inpainting.outside")

# JPEG noise: measured on textured 32 px photo crops, at quality 75 (50) at most 0.9 % (2.3 %) of the known
# pixels move by more than 48 levels in some channel. An output "differs" when over 2 % of its known pixels
# do: a fill of other holes with the mean colour does in most images, a good fill of them often does not.
MISMATCH_LEVELS = 48
MISMATCH_SHARE = 0.02
SHOWN_IDS = 5


def differs_outside_holes(output, image, mask) -> bool:
    """Whether more than ``MISMATCH_SHARE`` of the known pixels (``mask`` 1) of uint8 RGB ``output`` are
    further than ``MISMATCH_LEVELS`` from ``image`` in some channel (more than JPEG noise)."""
    known = mask > 0.5
    if not known.any():
        return False
    far = (np.abs(output.astype(np.int16) - image.astype(np.int16)).max(axis=-1) > MISMATCH_LEVELS)[known]
    return bool(far.mean() > MISMATCH_SHARE)


def _resize(output, shape, how: str):
    import cv2

    return cv2.resize(output, (shape[1], shape[0]), interpolation=getattr(cv2, RESIZE[how]))


def _outputs(pairs, template: str, dataset: str, bin_name: str, method: str, allow_partial: bool):
    """(rows with an output, their paths, ids without one) of one bin; a one-line error for missing outputs
    unless ``allow_partial`` (and some exist)."""
    rows = pairs[pairs["bin"] == bin_name]
    if rows.empty:
        raise UserError(f"pairs: no pairs in bin '{bin_name}' (bins present: {sorted(set(pairs['bin']))})")
    paths = [Path(template.format(dataset=dataset, bin=bin_name, image_id=i)) for i in rows["image_id"]]
    found = [p.is_file() for p in paths]
    missing = [i for i, ok in zip(rows["image_id"], found) if not ok]
    if missing and (not allow_partial or len(missing) == len(rows)):
        first = ", ".join(missing[:SHOWN_IDS]) + (", ..." if len(missing) > SHOWN_IDS else "")
        fix = "" if allow_partial else f", or set external_methods.{method}.allow_partial: true to score the others"
        raise UserError(f"{method} bin {bin_name}: {len(missing)} of {len(rows)} outputs missing (ids {first}; "
                        f"expected at {template}); run the method on the export{fix}")
    return rows[[bool(ok) for ok in found]], [p for p, ok in zip(paths, found) if ok], missing


def import_bin(pairs_csv, gt_dir, bin_name: str, method: str, dataset: str, s, out, root=None) -> dict:
    """Apply the protocol to one bin of an outside row's outputs; write ``out/<image_id>.png`` and the
    sidecar ``out/imported.json``; return the sidecar's record. Relative mask paths of ``pairs_csv`` are read from
    ``root`` (default: :func:`strdiffusion.io.pairs.run_root`)."""
    rows, paths, missing = _outputs(read_pairs_with_masks(pairs_csv, root), s.path, dataset, bin_name, method, s.allow_partial)
    differing = 0
    with atomic_dir(out) as tmp:
        for pair, path in zip(rows.itertuples(), paths):
            image_path = Path(gt_dir) / f"{pair.image_id}.png"
            if not image_path.is_file():
                raise UserError(f"{image_path}: test image of pair '{pair.image_id}' not found; check --gt-dir "
                                "or run the data stage")
            image = read_image_rgb(image_path)
            output = read_image_rgb(path)
            if output.shape != image.shape:
                if s.resize == "none":
                    raise UserError(f"{path}: {method}'s output is {output.shape[1]}x{output.shape[0]} but the test "
                                    f"image {image_path} is {image.shape[1]}x{image.shape[0]}; give outputs of the "
                                    f"test size or set external_methods.{method}.resize ({', '.join(list(RESIZE)[1:])})")
                output = _resize(output, image.shape, s.resize)
            mask = read_mask(pair.mask_file, size=image.shape[:2])
            differing += differs_outside_holes(output, image, mask)
            scored = output if s.as_is else np.where(mask[..., None] > 0.5, image, output).astype(np.uint8)
            save_png_atomic(tmp / f"{pair.image_id}.png", scored)
        record = {"method": method, "bin": bin_name, "path": s.path, "composited": not s.as_is, "resize": s.resize,
                  "scored": len(rows), "missing": missing, "known_pixels_differ": differing}
        write_text_atomic(tmp / SIDECAR, json.dumps(record, indent=2) + "\n")
    if differing > len(rows) / 2:
        log.warning("%s bin %s: known pixels differ from the input by more than JPEG noise in %d of %d outputs; "
                    "were they made for other masks or images? (run the method on `strdiffusion export`'s pairs)",
                    method, bin_name, differing, len(rows))
    if missing:
        log.warning("%s bin %s: scored on %d of %d images (allow_partial); missing: %s", method, bin_name,
                    len(rows), len(rows) + len(missing), ", ".join(missing[:SHOWN_IDS]))
    log.info("%s bin %s: %d outputs %s -> %s", method, bin_name, len(rows),
             "scored as delivered" if s.as_is else "composited with the known pixels", out)
    return record
