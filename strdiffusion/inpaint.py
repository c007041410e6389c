"""Inpainting stage: one shard of test pairs per job, or the user's own images.

Pipeline mode writes ``OUT/<image_id>.png`` — the composited result (known pixels from the
ground truth, holes from the method) — for the shard's pairs, into a temporary folder renamed
onto OUT at the end, so a killed job leaves no half-written shard.

Mask convention everywhere: mask FILES are white (255) = HOLE; in memory ``mask`` is 1 = known.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .utils import UserError, atomic_dir, read_image_rgb, read_mask, save_png_atomic

log = logging.getLogger("strdiffusion.inpaint")

CLASSICAL = ("telea", "navier_stokes", "biharmonic")
DIFFUSION = ("strdiffusion", "strdiffusion_noresample", "irsde")


def classical_inpaint(method: str, image: np.ndarray, mask: np.ndarray, radius: int = 3) -> np.ndarray:
    """Inpaint uint8 RGB ``image`` where ``mask`` == 0 (holes) with a classical method.

    Hole pixels of ``image`` are zeroed first, so no ground truth leaks into the result.
    Returns the composited uint8 RGB result.
    """
    known = mask[..., None] > 0.5
    degraded = np.where(known, image, 0).astype(np.uint8)
    hole_u8 = (~known[..., 0]).astype(np.uint8) * 255
    if method == "telea":
        out = cv2.inpaint(degraded, hole_u8, radius, cv2.INPAINT_TELEA)
    elif method == "navier_stokes":
        out = cv2.inpaint(degraded, hole_u8, radius, cv2.INPAINT_NS)
    elif method == "biharmonic":
        from skimage.restoration import inpaint_biharmonic

        out = inpaint_biharmonic(degraded.astype(np.float64) / 255.0, hole_u8 > 0, channel_axis=-1)
        out = np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
    else:
        raise UserError(f"unknown classical method '{method}'; choose one of {', '.join(CLASSICAL)}")
    return np.where(known, image, out).astype(np.uint8)


def shard_rows(pairs: pd.DataFrame, bin_name: str, shard: int, shard_size: int) -> pd.DataFrame:
    """Rows of ``pairs`` for ``bin_name`` that fall in shard ``shard`` (pair order, shard_size each)."""
    rows = pairs[pairs["bin"].astype(str) == str(bin_name)].reset_index(drop=True)
    if rows.empty:
        raise UserError(f"no pairs for bin '{bin_name}' in the pairs file; regenerate masks or fix the bins")
    start = shard * shard_size
    if start >= len(rows):
        raise UserError(f"shard {shard} is empty: bin '{bin_name}' has {len(rows)} pairs, shard size {shard_size}")
    return rows.iloc[start:start + shard_size]


def load_pair(gt_dir: Path, row) -> tuple[np.ndarray, np.ndarray]:
    image = read_image_rgb(Path(gt_dir) / f"{row.image_id}.png")
    mask = read_mask(row.mask, size=image.shape[:2])
    return image, mask


def run_shard(args) -> None:
    pairs = pd.read_csv(args.pairs, dtype={"bin": str, "image_id": str})
    rows = shard_rows(pairs, args.bin, args.shard, args.shard_size)
    out = Path(args.out)
    with atomic_dir(out) as tmp:
        if args.method in CLASSICAL:
            for row in rows.itertuples():
                image, mask = load_pair(args.gt_dir, row)
                save_png_atomic(tmp / f"{row.image_id}.png", classical_inpaint(args.method, image, mask))
        elif args.method in DIFFUSION:
            from .sampling import inpaint_rows

            inpaint_rows(args, rows, tmp)
        else:
            raise UserError(f"unknown method '{args.method}'; choose from {', '.join(CLASSICAL + DIFFUSION)}")
    log.info("%s: inpainted %d images of bin %s (shard %d) -> %s", args.method, len(rows), args.bin, args.shard, out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="strdiffusion inpaint",
        description="Inpaint a shard of the pipeline's test pairs, or your own image(s). "
                    "MASK CONVENTION: white (255) pixels of the mask file are HOLES to fill; black pixels are kept.")
    p.add_argument("--method", default="strdiffusion", choices=CLASSICAL + DIFFUSION)
    g = p.add_argument_group("pipeline shard")
    g.add_argument("--pairs", help="pairs CSV (image_id, bin, mask)")
    g.add_argument("--bin", help="hole-ratio bin label, e.g. 10-20")
    g.add_argument("--gt-dir", help="folder of ground-truth test images <image_id>.png")
    g.add_argument("--structure-dir", help="folder with gray/ and edge/ maps of the test images")
    g.add_argument("--shard", type=int, default=0)
    g.add_argument("--shard-size", type=int, default=16)
    g.add_argument("--out", help="output folder (shard) or output PNG/folder (own images)")
    return p


def main(argv=None) -> int:
    from .sampling import add_sampling_arguments

    p = build_parser()
    add_sampling_arguments(p)
    args = p.parse_args(argv)
    if getattr(args, "image", None):
        from .sampling import inpaint_user_images

        inpaint_user_images(args)
        return 0
    missing = [k for k in ("pairs", "bin", "gt_dir", "out") if not getattr(args, k)]
    if missing:
        raise UserError("pipeline mode needs " + ", ".join("--" + k.replace("_", "-") for k in missing)
                        + " (or use --image/--mask for your own images)")
    if args.shard < 0 or args.shard_size <= 0:
        raise UserError("--shard must be >= 0 and --shard-size > 0")
    run_shard(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
