"""``strdiffusion metrics``: PSNR, SSIM, L1, LPIPS per image; FID and KID per set (:mod:`strdiffusion.metrics.evaluate`).

The work is looked up on :mod:`strdiffusion.metrics.evaluate` at call time (``metrics.InceptionFeatures`` among
it), so a stand-in set there is the one the stage uses.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from strdiffusion.io.errors import UserError
from strdiffusion.metrics import evaluate as lib
from strdiffusion.settings.jobs import ImageMetricSettings, SetMetricSettings

from .options import add_arguments, from_parsed


def _bin_args(p: argparse.ArgumentParser, out_help: str) -> None:
    p.add_argument("--pairs", required=True, help="pairs CSV (columns image_id, bin, mask)")
    p.add_argument("--gt-dir", required=True, help="folder of ground-truth images <image_id>.png")
    p.add_argument("--bin", required=True, help="hole-ratio bin label to evaluate, e.g. 10-20")
    p.add_argument("--out", required=True, help=out_help)


def _common_args(p: argparse.ArgumentParser) -> None:
    _bin_args(p, "output CSV; status goes to <out stem>.status.json")
    p.add_argument("--pred-dir", required=True, nargs="+",
                   help="folder(s) of composited predictions <image_id>.png (e.g. every shard of a bin)")
    p.add_argument("--method", required=True, help="method name written into the output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="strdiffusion metrics",
        description="Metrics on whole composited images against the ground truth. Missing pretrained "
                    "weights give NaN and a reason in <out stem>.status.json; nothing is downloaded.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("images", help="PSNR, SSIM, L1, LPIPS per image")
    _common_args(p)
    add_arguments(p, ImageMetricSettings)
    p = sub.add_parser("sets", help="FID and KID of the set against its ground truths")
    _common_args(p)
    p.add_argument("--reference", default="",
                   help="the ground truths' statistics from `metrics reference` (.npz); used when fresh")
    add_arguments(p, SetMetricSettings)
    p = sub.add_parser("reference", help="the ground truths' Inception statistics of one bin, for every "
                                         "method's set job (.npz; kept when up to date)")
    _bin_args(p, "output .npz")
    add_arguments(p, SetMetricSettings)  # the set jobs' network options (the metric ones are unused here)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.command == "sets" and (args.kid_subsets < 1 or args.kid_subset_size < 2):
        raise UserError("--kid-subsets must be >= 1 and --kid-subset-size >= 2")
    job = lib.BinJob(pairs=Path(args.pairs), gt_dir=Path(args.gt_dir), bin=args.bin, out=Path(args.out),
                     pred_dirs=tuple(Path(d) for d in getattr(args, "pred_dir", ())),
                     method=getattr(args, "method", ""),
                     reference=Path(args.reference) if getattr(args, "reference", "") else None)
    if args.command == "images":
        lib.run_images(job, from_parsed(ImageMetricSettings, args))
    elif args.command == "reference":
        lib.run_reference(job, from_parsed(SetMetricSettings, args))
    else:
        lib.run_sets(job, from_parsed(SetMetricSettings, args))
    return 0
