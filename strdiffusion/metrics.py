"""The metrics stage: PSNR, SSIM, L1 and LPIPS per image; FID and KID per (method, bin) set, from image files.

Every metric is computed on the WHOLE composited image against its ground truth (conventions and
formulas: ``metric_math.py``; the LPIPS and Inception networks and their weights: ``metric_nets.py``).
``metrics images`` writes one row per image, ``metrics sets`` one row per set with the image count
and the FID backend (pytorch-fid's ``calculate_frechet_distance``, or ``--fid-method exact`` and the
fallback when it fails, which the backend column says). Either may be given an empty metric list
(``--metrics ''`` or ``--metrics`` with no value, as the workflow renders ``metrics.per_set: []``):
its CSV then has no metric columns (and a set CSV no ``fid_backend``), and the status sidecar is ``{}``.

Pretrained weights are never downloaded here: when they are absent, the metric is reported as NaN
with a reason, in ``<out stem>.status.json``, that says where to put the file.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np

from .external_rows import missing_ids
from .metric_math import (IMAGE_METRICS, SET_METRICS, compute_image_metrics, fid_backend,
                          fid_from_features, kid_from_features)
from .metric_nets import InceptionFeatures, LPIPSMetric
from .options import add_arguments, from_namespace
from .settings import ImageMetricSettings, SetMetricSettings
from .utils import UserError, read_image_rgb, write_csv_atomic, write_text_atomic

log = logging.getLogger("strdiffusion.metrics")


def _parse_metrics(text: str, allowed) -> list[str]:
    """The metrics named in ``text`` (comma-separated, any case) in ``allowed``'s order; empty text: none."""
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in allowed]
    if bad:
        raise UserError(f"--metrics {text}: choose a comma-separated subset of {','.join(allowed)}, or none")
    return [n for n in allowed if n in names]


def load_pair_ids(pairs_csv, bin_label: str) -> list[str]:
    """Image ids of the rows of a pairs CSV (columns image_id, bin, ...) whose bin is ``bin_label``."""
    import pandas as pd

    pairs_csv = Path(pairs_csv)
    if not pairs_csv.is_file():
        raise UserError(f"{pairs_csv}: pairs file not found; run the masks stage first")
    try:
        df = pd.read_csv(pairs_csv, dtype=str, keep_default_na=False)
    except (ValueError, OSError) as exc:
        raise UserError(f"{pairs_csv}: cannot read as CSV ({exc})") from None
    missing = [c for c in ("image_id", "bin") if c not in df.columns]
    if missing:
        raise UserError(f"{pairs_csv}: missing column(s) {missing}; expected image_id, bin, mask")
    ids = df.loc[df["bin"] == str(bin_label), "image_id"].tolist()
    if not ids:
        raise UserError(f"{pairs_csv}: no rows with bin '{bin_label}' (bins present: "
                        f"{sorted(set(df['bin']))})")
    dupes = sorted(i for i, count in Counter(ids).items() if count > 1)
    if dupes:
        raise UserError(f"{pairs_csv}: image id(s) {dupes[:5]} appear more than once in bin '{bin_label}'; "
                        "predictions are named by image id, so each may appear once per bin")
    return ids


def prediction_ids(pairs_csv, bin_label: str, pred_dirs) -> list[str]:
    """Ids of a bin that a row is scored on: every pair's, less those an outside row has no output for
    (``external_methods.<method>.allow_partial``)."""
    missing = missing_ids(pred_dirs)
    return [i for i in load_pair_ids(pairs_csv, bin_label) if i not in missing]


def load_image_pairs(ids, gt_dir, pred_dirs) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Read ``GT_DIR/<id>.png`` and ``<pred dir>/<id>.png`` for every id; sizes must match.

    ``pred_dirs`` is one folder or several (the inpainting shards of a bin); each prediction is
    looked up in them in order.
    """
    if isinstance(pred_dirs, (str, Path)):
        pred_dirs = [pred_dirs]
    pred_dirs = [Path(d) for d in pred_dirs]
    gts, preds = [], []
    for image_id in ids:
        gt_path = Path(gt_dir) / f"{image_id}.png"
        pred_path = next((d / f"{image_id}.png" for d in pred_dirs if (d / f"{image_id}.png").is_file()),
                         pred_dirs[0] / f"{image_id}.png")
        for path, what in ((gt_path, "ground-truth image"), (pred_path, "prediction")):
            if not path.is_file():
                raise UserError(f"{path}: {what} not found for image id '{image_id}'")
        gt, pred = read_image_rgb(gt_path), read_image_rgb(pred_path)
        if gt.shape != pred.shape:
            raise UserError(f"{pred_path} is {pred.shape[1]}x{pred.shape[0]} but {gt_path} is "
                            f"{gt.shape[1]}x{gt.shape[0]}; predictions must have the ground truth's size")
        gts.append(gt)
        preds.append(pred)
    return gts, preds


def read_clipped(pred_dirs, ids) -> list[float] | None:
    """Per id, the diffusion sampler's share of hole pixels outside [0, 1] before clamping, from the
    shards' ``clipped.csv`` (written by the inpaint stage); None when no shard has one (classical)."""
    import pandas as pd

    pred_dirs = [Path(pred_dirs)] if isinstance(pred_dirs, (str, Path)) else [Path(d) for d in pred_dirs]
    files = [d / "clipped.csv" for d in pred_dirs if (d / "clipped.csv").is_file()]
    if not files:
        return None
    shares = pd.concat([pd.read_csv(f, dtype={"image_id": str}) for f in files]).set_index("image_id")["clipped"]
    return [float(shares.get(str(i), float("nan"))) for i in ids]


def status_path(out) -> Path:
    """Sidecar of an output CSV: ``per_image.csv`` -> ``per_image.status.json``."""
    return Path(out).with_suffix(".status.json")


def _write_status(out, status: dict) -> None:
    write_text_atomic(status_path(out), json.dumps(status, indent=2) + "\n")


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", required=True, help="pairs CSV (columns image_id, bin, mask)")
    p.add_argument("--gt-dir", required=True, help="folder of ground-truth images <image_id>.png")
    p.add_argument("--pred-dir", required=True, nargs="+",
                   help="folder(s) of composited predictions <image_id>.png (e.g. every shard of a bin)")
    p.add_argument("--method", required=True, help="method name written into the output")
    p.add_argument("--bin", required=True, help="hole-ratio bin label to evaluate, e.g. 10-20")
    p.add_argument("--out", required=True, help="output CSV; status goes to <out stem>.status.json")


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
    add_arguments(p, SetMetricSettings)
    return parser


def _run_images(args, s: ImageMetricSettings) -> None:
    import pandas as pd

    metrics = _parse_metrics(",".join(s.metrics), IMAGE_METRICS)
    if s.crop < 0:
        raise UserError(f"--crop {s.crop}: must be >= 0")
    ids = prediction_ids(args.pairs, args.bin, args.pred_dir)
    gts, preds = load_image_pairs(ids, args.gt_dir, args.pred_dir)
    status = {m: {"available": True, "reason": ""} for m in metrics}
    lpips_metric = None
    if "lpips" in metrics:
        from .precision import configure

        configure(s.tf32, deterministic=False)  # both ways: cuDNN allows TF32 unless told not to
        lpips_metric = LPIPSMetric(s.device, s.alexnet_weights or None, s.batch_size)
        if not lpips_metric.available:
            status["lpips"] = {"available": False, "reason": f"LPIPS n/a: {lpips_metric.reason}"}
            log.warning("%s", status["lpips"]["reason"])
    started = time.perf_counter()
    try:
        values = compute_image_metrics(gts, preds, metrics, lpips_metric, crop=s.crop)
    except ValueError as exc:
        raise UserError(f"{' '.join(map(str, args.pred_dir))}: {exc}") from None
    log.info("%s bin %s: %d images, %s in %.1f s", args.method, args.bin, len(ids), ",".join(metrics),
             time.perf_counter() - started)
    table = pd.concat([pd.DataFrame({"method": args.method, "bin": args.bin, "image_id": ids}), values], axis=1)
    clipped = read_clipped(args.pred_dir, ids)
    if clipped is not None:
        table["clipped"] = clipped
    write_csv_atomic(table, args.out)
    _write_status(args.out, status)


def _run_sets(args, s: SetMetricSettings) -> None:
    import pandas as pd

    metrics = _parse_metrics(",".join(s.metrics), SET_METRICS)
    ids = prediction_ids(args.pairs, args.bin, args.pred_dir)
    gts, preds = load_image_pairs(ids, args.gt_dir, args.pred_dir)
    n = len(ids)
    row = {"method": args.method, "bin": args.bin, "n_images": n}
    if "fid" in metrics:
        row["fid"] = math.nan
    if "kid" in metrics:
        row.update(kid_mean=math.nan, kid_std=math.nan)
    if metrics:
        row["fid_backend"] = fid_backend(s.fid_method)
    status = {m: {"available": True, "reason": ""} for m in metrics}

    def unavailable(reason: str, which=metrics) -> None:
        for m in which:
            status[m] = {"available": False, "reason": f"{m.upper()} n/a: {reason}"}
            log.warning("%s", status[m]["reason"])

    if not metrics:
        log.info("%s bin %s: %d images, no set metrics asked for", args.method, args.bin, n)
    elif n < 2:
        unavailable(f"too few images ({n}; at least 2 are needed)")
    else:
        from .precision import configure

        configure(s.tf32, deterministic=False)
        features = InceptionFeatures(s.device, s.inception_weights or None, s.batch_size)
        if not features.available:
            unavailable(features.reason)
        else:
            started = time.perf_counter()
            f_gt, f_pred = features(gts), features(preds)
            log.info("Inception features of %d images in %.1f s", 2 * n, time.perf_counter() - started)
            if "fid" in metrics:
                started = time.perf_counter()
                try:
                    row["fid"] = fid_from_features(f_pred, f_gt, s.fid_method)
                except ValueError as exc:  # pytorch-fid: "Imaginary component" from sqrtm
                    row["fid"] = fid_from_features(f_pred, f_gt, "exact")
                    row["fid_backend"] = fid_backend("exact")
                    status["fid"]["reason"] = (f"pytorch-fid's calculate_frechet_distance failed ({exc}); "
                                               "FID computed with --fid-method exact instead")
                    log.warning("%s", status["fid"]["reason"])
                log.info("Frechet distance (%s) in %.1f s", row["fid_backend"], time.perf_counter() - started)
            if "kid" in metrics:
                row["kid_mean"], row["kid_std"] = kid_from_features(
                    f_pred, f_gt, s.kid_subsets, s.kid_subset_size)
    write_csv_atomic(pd.DataFrame([row]), args.out)
    _write_status(args.out, status)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.command == "sets" and (args.kid_subsets < 1 or args.kid_subset_size < 2):
        raise UserError("--kid-subsets must be >= 1 and --kid-subset-size >= 2")
    if args.command == "images":
        _run_images(args, from_namespace(ImageMetricSettings, args))
    else:
        _run_sets(args, from_namespace(SetMetricSettings, args))
    return 0
