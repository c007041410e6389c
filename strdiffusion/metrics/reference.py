"""Reference statistics: the ground truths' Inception features of one data set and bin, computed once.

Every method's set job of a bin compares its predictions with the same ground truths, so their
features are computed once, by ``strdiffusion metrics reference`` (the workflow's
``reference_stats`` rule), and read by each ``metrics sets --reference FILE`` job.

The file is an ``.npz`` like pytorch-fid's saved statistics: ``mu`` (float64, 2048) and ``sigma``
(float64, 2048 x 2048, sample covariance), plus what KID needs and FID/KID's identity with a fresh
computation asks for, the features themselves (``features``, N x 2048, float32 when that is exact,
as it is for the network's float32 output). Beside them:

- ``weights_sha256``: the sha256 of the Inception weights file the features came from;
- ``image_list_sha256``: the sha256 of the image ids in order with each ground-truth file's size and
  modification time (a cheap fingerprint: no image is read to check it);
- ``n_images``, ``dims``, ``backend`` (pytorch-fid's version), ``format``; ``reason`` when the
  weights were missing (then no features: the set jobs report n/a themselves).

A file whose hashes differ from the current images or weights is stale: ``metrics reference``
recomputes it, and a set job given a stale file computes the ground truths' features itself and
says so in its log.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from strdiffusion.io.errors import UserError
from strdiffusion.io.files import atomic_path

log = logging.getLogger("strdiffusion.metrics.evaluate")

FORMAT = 1
_weights_sha_cache: dict[tuple, str] = {}


def weights_sha256(path) -> str:
    """sha256 of the weights file (remembered per path, size and mtime within a process)."""
    from strdiffusion.io.files import sha256_of

    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _weights_sha_cache:
        _weights_sha_cache[key] = sha256_of(path)
    return _weights_sha_cache[key]


def image_list_sha256(gt_dir, ids) -> str:
    """Fingerprint of the ground truths of ``ids`` (in order): id, file size and mtime of each.

    Raises UserError naming the first missing file.
    """
    digest = hashlib.sha256()
    gt_dir = Path(gt_dir)
    for image_id in ids:
        path = gt_dir / f"{image_id}.png"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise UserError(f"{path}: ground-truth image not found for image id '{image_id}'") from None
        digest.update(f"{image_id}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _backend() -> str:
    import pytorch_fid

    return f"pytorch-fid {pytorch_fid.__version__}"


def statistics(f: np.ndarray, weights_path, gt_dir, ids) -> dict:
    """Statistics of the ground truths ``GT_DIR/<id>.png`` from their features ``f`` (N x dims, computed by
    the metrics stage with the weights at ``weights_path``)."""
    from strdiffusion.metrics.formulas import mean_and_cov

    dims = f.shape[1]
    if len(f) >= 2:
        mu, sigma = mean_and_cov(f)
    else:
        mu, sigma = f.mean(axis=0, dtype=np.float64), np.full((dims, dims), np.nan)
    return dict(mu=mu, sigma=sigma, features=f, weights_sha256=weights_sha256(weights_path),
                image_list_sha256=image_list_sha256(gt_dir, ids), n_images=len(f), dims=dims, backend=_backend(),
                format=FORMAT, reason="")


def unavailable(gt_dir, ids, reason: str) -> dict:
    """The file written when the weights are missing: no features, the reason, the image list's hash."""
    return dict(weights_sha256="", image_list_sha256=image_list_sha256(gt_dir, ids), n_images=len(ids), dims=0,
                backend=_backend(), format=FORMAT, reason=reason)


def write(path, stats: dict) -> None:
    """Write ``stats`` as ``.npz`` atomically (a temporary file renamed when complete)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **{k: np.asarray(v) for k, v in stats.items()})


def read(path) -> dict:
    """The statistics in ``path``; UserError naming the file when it is not one."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            stats = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{path}: not a reference statistics file ({exc.__class__.__name__}: {exc}); "
                        "delete it and re-run `strdiffusion metrics reference`") from None
    for key in ("weights_sha256", "image_list_sha256", "format"):
        if key not in stats:
            raise UserError(f"{path}: reference statistics without '{key}'; delete it and re-run "
                            "`strdiffusion metrics reference`")
    return {k: (v.item() if v.ndim == 0 else v) for k, v in stats.items()}


def stale_reason(stats: dict, gt_dir, ids, weights_path) -> str:
    """Why ``stats`` does not describe the ground truths of ``ids`` with these weights ('' if it does)."""
    if int(stats["format"]) != FORMAT:
        return f"format {stats['format']} is not {FORMAT}"
    if "features" not in stats:
        return f"it holds no features ({stats.get('reason') or 'weights were missing'})"
    if stats["image_list_sha256"] != image_list_sha256(gt_dir, ids):
        return "the ground-truth images or their list changed"
    if stats["weights_sha256"] != weights_sha256(weights_path):
        return f"the Inception weights changed ({weights_path})"
    if stats.get("backend") != _backend():
        return f"it was computed with {stats.get('backend')}, not {_backend()}"
    return ""


def load_fresh(path, gt_dir, ids, weights_path):
    """The ground truths' features (N x dims, as stored) from ``path`` when it is fresh, else None
    (missing or stale: the reason is logged, and the caller computes them)."""
    path = Path(path)
    if not path.is_file():
        log.warning("reference statistics %s not found; computing the ground truths' features here", path)
        return None
    stats = read(path)
    why = stale_reason(stats, gt_dir, ids, weights_path)
    if why:
        log.warning("reference statistics %s are stale (%s); computing the ground truths' features here", path, why)
        return None
    log.info("ground truths' features of %d images from %s", len(ids), path)
    return np.asarray(stats["features"])
