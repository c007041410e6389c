"""The metrics stage: PSNR, SSIM, L1 and LPIPS per image; FID and KID per (method, bin) set, from image files.

Every metric is computed on the WHOLE composited image against its ground truth (conventions and
formulas: ``formulas.py``; the LPIPS and Inception networks and their weights: ``nets.py``).
``metrics images`` writes one row per image, ``metrics sets`` one row per set with the image count
and the FID backend (pytorch-fid's ``calculate_frechet_distance``, or ``--fid-method exact`` and the
fallback when it fails, which the backend column says). Either may be given an empty metric list
(``--metrics ''`` or ``--metrics`` with no value, as the workflow renders ``metrics.per_set: []``):
its CSV then has no metric columns (and a set CSV no ``fid_backend``), and the status sidecar is ``{}``.

Images are read chunk by chunk from the files (``iter_image_pairs``), so a job's memory holds the
features (2,048 floats per image) and one chunk of images, not the set. ``metrics reference``
writes the ground truths' features of a bin once (``reference.py``); ``metrics sets
--reference FILE`` reads them when they are fresh.

Pretrained weights are never downloaded here: when they are absent, the metric is reported as NaN
with a reason, in ``<out stem>.status.json``, that says where to put the file.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from strdiffusion.io.errors import UserError
from strdiffusion.io.files import status_path, write_csv_atomic, write_text_atomic
from strdiffusion.io.images import read_image_rgb
from strdiffusion.io.pairs import read_pairs
from strdiffusion.metrics.formulas import compute_image_metrics, fid_backend, fid_from_features, kid_from_features
from strdiffusion.metrics.nets import InceptionFeatures, LPIPSMetric
from strdiffusion.settings.external import missing_ids
from strdiffusion.settings.jobs import ImageMetricSettings, SetMetricSettings
from strdiffusion.settings.methods import IMAGE_METRICS, SET_METRICS

log = logging.getLogger("strdiffusion.metrics.evaluate")


def _chosen(metrics, allowed) -> list[str]:
    """The ``metrics`` (names, any case) in ``allowed``'s order; none given: none."""
    names = [m.strip().lower() for m in metrics if m.strip()]
    bad = [n for n in names if n not in allowed]
    if bad:
        raise UserError(f"--metrics {','.join(metrics)}: choose a comma-separated subset of {','.join(allowed)}, or "
                        "none")
    return [n for n in allowed if n in names]


def load_pair_ids(pairs_csv, bin_label: str) -> list[str]:
    """Image ids of the rows of a pairs CSV (columns image_id, bin, ...) whose bin is ``bin_label``."""
    df = read_pairs(pairs_csv, needs=("image_id", "bin"))
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


def _png_names(folder: Path) -> set[str]:
    """Names in ``folder``, from one listing (one stat per file would be one per id and folder)."""
    import os

    try:
        with os.scandir(folder) as it:
            return {e.name for e in it}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def pair_paths(ids, gt_dir, pred_dirs) -> list[tuple[Path, Path]]:
    """``(GT_DIR/<id>.png, <pred dir>/<id>.png)`` for every id, checked to exist; no image is read.

    ``pred_dirs`` is one folder or several (the inpainting shards of a bin); each prediction is
    looked up in them in order. Each folder is listed once, so the cost is linear in the number of
    ids and folders, not their product.
    """
    if isinstance(pred_dirs, (str, Path)):
        pred_dirs = [pred_dirs]
    pred_dirs = [Path(d) for d in pred_dirs]
    gt_dir = Path(gt_dir)
    gt_names = _png_names(gt_dir)
    where: dict[str, Path] = {}
    for d in reversed(pred_dirs):  # the first folder that has a name wins
        where.update(dict.fromkeys(_png_names(d), d))
    out = []
    for image_id in ids:
        name = f"{image_id}.png"
        gt_path = gt_dir / name
        pred_path = where.get(name, pred_dirs[0]) / name
        if name not in gt_names:
            raise UserError(f"{gt_path}: ground-truth image not found for image id '{image_id}'")
        if name not in where:
            raise UserError(f"{pred_path}: prediction not found for image id '{image_id}'")
        out.append((gt_path, pred_path))
    return out


def _size_of(path) -> tuple[int, int]:
    """(width, height) of an image from its header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return read_image_rgb(path).shape[1::-1]  # raises the one-line error naming the file


def iter_image_pairs(paths, chunk: int, read: str = "both"):
    """Decoded ``(ground truths, predictions)`` of ``paths`` (from ``pair_paths``), ``chunk`` pairs at a
    time, so that a stage holds one chunk of images in memory whatever the set's size; sizes must match.

    ``read``: 'both', or 'gt' / 'pred' to decode only that side (the other is None; its size is still
    checked, from the file's header).
    """
    chunk = max(1, int(chunk))
    for start in range(0, len(paths), chunk):
        gts, preds = [], []
        for gt_path, pred_path in paths[start:start + chunk]:
            gt = read_image_rgb(gt_path) if read != "pred" else None
            if pred_path is None:  # ground truths alone (reference statistics)
                gts.append(gt)
                preds.append(None)
                continue
            pred = read_image_rgb(pred_path) if read != "gt" else None
            gt_size = gt.shape[1::-1] if gt is not None else tuple(_size_of(gt_path))
            pred_size = pred.shape[1::-1] if pred is not None else tuple(_size_of(pred_path))
            if gt_size != pred_size:
                raise UserError(f"{pred_path} is {pred_size[0]}x{pred_size[1]} but {gt_path} is "
                                f"{gt_size[0]}x{gt_size[1]}; predictions must have the ground truth's size")
            gts.append(gt)
            preds.append(pred)
        yield gts, preds


def load_image_pairs(ids, gt_dir, pred_dirs) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Read ``GT_DIR/<id>.png`` and ``<pred dir>/<id>.png`` for every id, all at once (small sets only;
    the stage streams them with ``iter_image_pairs``); sizes must match."""
    paths = pair_paths(ids, gt_dir, pred_dirs)
    gts, preds = [], []
    for g, p in iter_image_pairs(paths, max(1, len(paths))):
        gts += g
        preds += p
    return gts, preds


def set_features(features, paths, which: str = "both", chunk: int = 0):
    """Features (N x dims) of the ground truths and/or predictions of ``paths``, computed chunk by
    chunk from the files: memory holds the features and one chunk of images. float32, the network's
    own output precision (float64 if a network gives values float32 cannot hold).

    ``which``: 'both' -> (gt, pred); 'gt' or 'pred' -> that one array. ``chunk`` defaults to the
    network's batch size, so the batches are those of one call on the whole list.
    """
    chunk = int(chunk or getattr(features, "batch_size", 16))
    n = len(paths)
    out = {side: None for side in (("gt", "pred") if which == "both" else (which,))}
    for i, (gts, preds) in enumerate(iter_image_pairs(paths, chunk, which)):
        rows = slice(i * chunk, i * chunk + len(gts))
        for side, images in (("gt", gts), ("pred", preds)):
            if side in out:
                f = features(images)
                if out[side] is None:  # the network's dims, allocated once for the whole set
                    out[side] = np.empty((n, f.shape[1]), np.float32)
                f32 = f.astype(np.float32)
                if not np.array_equal(f32, f):  # a float64 network: keep its precision
                    out[side] = out[side].astype(np.float64)
                out[side][rows] = f
    return (out["gt"], out["pred"]) if which == "both" else out[which]


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



def _write_status(out, status: dict) -> None:
    write_text_atomic(status_path(out), json.dumps(status, indent=2) + "\n")


@dataclass(frozen=True)
class BinJob:
    """What one metric job reads and writes: the pairs CSV and the bin it evaluates, the ground truths' folder,
    the folders of one method's predictions (e.g. every shard of the bin), the method's name for the output,
    the output file, and (set jobs only) the ground truths' reference statistics, used when fresh."""
    pairs: Path
    gt_dir: Path
    bin: str
    out: Path
    pred_dirs: tuple[Path, ...] = ()
    method: str = ""
    reference: Path | None = None


def _configure(tf32: bool) -> None:
    """TF32 both ways before a metric network runs (cuDNN allows TF32 unless told not to); only then, so that a job
    whose weights are missing computes nothing and never loads torch."""
    from strdiffusion.runtime.precision import configure

    configure(tf32, deterministic=False)


def run_images(job: BinJob, s: ImageMetricSettings) -> None:
    """``metrics images``: the per-image metrics of one bin."""
    import pandas as pd

    metrics = _chosen(s.metrics, IMAGE_METRICS)
    if s.crop < 0:
        raise UserError(f"--crop {s.crop}: must be >= 0")
    ids = prediction_ids(job.pairs, job.bin, job.pred_dirs)
    paths = pair_paths(ids, job.gt_dir, job.pred_dirs)
    status = {m: {"available": True, "reason": ""} for m in metrics}
    lpips_metric = None
    if "lpips" in metrics:
        lpips_metric = LPIPSMetric(s.device, s.alexnet_weights or None, s.batch_size)
        if lpips_metric.available:
            _configure(s.tf32)
        else:
            status["lpips"] = {"available": False, "reason": f"LPIPS n/a: {lpips_metric.reason}"}
            log.warning("%s", status["lpips"]["reason"])
    started = time.perf_counter()
    chunks = []
    try:  # chunk by chunk: memory holds one chunk of images, whatever the set's size
        for gts, preds in iter_image_pairs(paths, s.batch_size * max(1, 64 // s.batch_size)):
            chunks.append(compute_image_metrics(gts, preds, metrics, lpips_metric, crop=s.crop))
    except ValueError as exc:
        raise UserError(f"{' '.join(map(str, job.pred_dirs))}: {exc}") from None
    values = pd.concat(chunks, ignore_index=True)
    log.info("%s bin %s: %d images, %s in %.1f s", job.method, job.bin, len(ids), ",".join(metrics),
             time.perf_counter() - started)
    table = pd.concat([pd.DataFrame({"method": job.method, "bin": job.bin, "image_id": ids}), values], axis=1)
    clipped = read_clipped(job.pred_dirs, ids)
    if clipped is not None:
        table["clipped"] = clipped
    write_csv_atomic(table, job.out)
    _write_status(job.out, status)


def run_sets(job: BinJob, s: SetMetricSettings) -> None:
    """``metrics sets``: FID and KID of one bin against its ground truths."""
    import pandas as pd

    metrics = _chosen(s.metrics, SET_METRICS)
    ids = prediction_ids(job.pairs, job.bin, job.pred_dirs)
    paths = pair_paths(ids, job.gt_dir, job.pred_dirs)
    n = len(ids)
    row = {"method": job.method, "bin": job.bin, "n_images": n}
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
        log.info("%s bin %s: %d images, no set metrics asked for", job.method, job.bin, n)
    elif n < 2:
        unavailable(f"too few images ({n}; at least 2 are needed)")
    else:
        features = InceptionFeatures(s.device, s.inception_weights or None, s.batch_size)
        if not features.available:
            unavailable(features.reason)
        else:
            _configure(s.tf32)
            started = time.perf_counter()
            f_gt, f_pred = _gt_and_pred_features(job, features, ids, paths)
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
    write_csv_atomic(pd.DataFrame([row]), job.out)
    _write_status(job.out, status)


def _gt_and_pred_features(job: BinJob, features, ids, paths):
    """The ground truths' features from the reference statistics file when it is given and fresh
    (same image list, same weights), else computed here; the predictions' features, streamed."""
    if job.reference is not None:
        from strdiffusion.metrics.reference import load_fresh

        f_gt = load_fresh(job.reference, job.gt_dir, ids, features.weights_path)
        if f_gt is not None:
            return f_gt, set_features(features, paths, "pred")
    return set_features(features, paths, "both")


def run_reference(job: BinJob, s: SetMetricSettings) -> None:
    """``metrics reference``: write (or keep, when fresh) the reference statistics of one bin."""
    from strdiffusion.metrics.reference import read, stale_reason, statistics, unavailable, write

    ids = load_pair_ids(job.pairs, job.bin)
    out = job.out
    features = InceptionFeatures(s.device, s.inception_weights or None, s.batch_size)
    if not features.available:
        log.warning("reference statistics n/a: %s", features.reason)
        write(out, unavailable(job.gt_dir, ids, features.reason))
        return
    if out.is_file():
        with_features = read(out)
        why = stale_reason(with_features, job.gt_dir, ids, features.weights_path)
        if not why:
            log.info("%s is up to date (%d images); kept", out, len(ids))
            return
        log.info("%s is stale (%s); recomputing", out, why)
    _configure(s.tf32)  # as the set jobs do: the statistics must come from the same numerics as their features
    stats = statistics(set_features(features, [(job.gt_dir / f"{i}.png", None) for i in ids], "gt"),
                       features.weights_path, job.gt_dir, ids)
    write(out, stats)
    log.info("reference statistics of %d ground truths (bin %s) written to %s", len(ids), job.bin, out)
