"""Evaluation metrics: PSNR, SSIM, L1 and LPIPS per image; FID and KID per (method, bin) set.

Conventions (see the spec's "Metric conventions"):
- Every metric is computed on the WHOLE composited image against its ground truth, both uint8
  HxWx3 RGB of the same size.
- PSNR: float64, data range 255. Identical images give ``inf`` (written as ``inf`` in the CSV;
  tables decide how to show it). ``crop`` removes a border of that many pixels first (IR-SDE: 4).
- SSIM: skimage with Wang et al.'s settings (Gaussian window, sigma 1.5, population covariance),
  on the same crop as PSNR. skimage's defaults (7x7 uniform window) give different numbers.
- L1: mean absolute error in [0, 1] units, whole image (no crop).
- LPIPS: the ``lpips`` package, AlexNet trunk, version 0.1, inputs scaled to [-1, 1], whole image.
- FID: ``pytorch-fid`` 0.3.0, 2048-d pool3 features of its FID Inception (its own bilinear resize
  to 299, inputs in [0, 1]) and its ``calculate_frechet_distance``. Reported with the image count
  and the backend. Its scipy ``sqrtm`` is slow on CPU and can fail on small sets ("Imaginary
  component"); ``--fid-method exact`` (and the fallback on failure) computes the same distance
  from an SVD / symmetric eigendecomposition, and the backend column says so.
- KID: unbiased MMD^2 with the kernel (x.y/d + 1)^3 on the same features, mean and std over
  subsets (torch-fidelity's definition; our subset seed is 0).

Pretrained weights are never downloaded here (``strdiffusion weights fetch`` / the workflow's
``weights`` rule fetches them once, hash-checked). They are looked up in the torch hub cache
(``$TORCH_HOME/hub/checkpoints/``) or at a path the user gives; when absent, the metric is
reported as NaN with a reason that says where to put the file. The networks are then built
through the packages' own loading code (``torch.hub.load_state_dict_from_url``), which uses a
cached file as is.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from .gpu import resolve_device
from .utils import UserError, equal_size_runs, read_image_rgb, write_csv_atomic, write_text_atomic

log = logging.getLogger("strdiffusion.metrics")

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
IMAGE_METRICS = ("psnr", "ssim", "l1", "lpips")
SET_METRICS = ("fid", "kid")
SSIM_SETTINGS = dict(data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                     use_sample_covariance=False)


# ----------------------------------------------------------------------------- per-image metrics

def random_fid_inception(init_weights: bool = False):
    """pytorch-fid's FID Inception layout (the 1008-class trunk with its FID blocks) with random
    weights: the module tree whose state dict ``pt_inception-2015-12-05-6726825d.pth`` fills.
    For tests (stand-in weight files) and throughput benchmarks only; never for reported numbers."""
    from pytorch_fid import inception as fid

    net = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=init_weights)
    net.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid.FIDInceptionE_1(1280)
    net.Mixed_7c = fid.FIDInceptionE_2(2048)
    return net


def _pair(a, b, crop: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if crop < 0:
        raise ValueError(f"crop must be >= 0, got {crop}")
    if crop:
        if min(a.shape[:2]) <= 2 * crop:
            raise ValueError(f"crop {crop} px leaves nothing of a {a.shape[1]}x{a.shape[0]} image")
        a, b = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
    return a, b


def psnr(a, b, crop: int = 0) -> float:
    """PSNR in dB of two uint8 images (data range 255, float64); ``inf`` when they are identical."""
    a, b = _pair(a, b, crop)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    if mse == 0:
        return math.inf
    return float(10.0 * np.log10(255.0 ** 2 / mse))


def ssim(a, b, crop: int = 0) -> float:
    """SSIM of two uint8 HxWx3 images with Wang et al.'s Gaussian window (sigma 1.5).

    Needs at least 11x11 pixels after the crop (the Gaussian window's size).
    """
    from skimage.metrics import structural_similarity

    a, b = _pair(a, b, crop)
    if min(a.shape[:2]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 px, got {a.shape[1]}x{a.shape[0]}")
    return float(structural_similarity(a, b, **SSIM_SETTINGS))


def l1(a, b) -> float:
    """Mean absolute error of two uint8 images, in [0, 1] units."""
    a, b = _pair(a, b, 0)
    return float(np.mean(np.abs(a.astype(np.float64) - b.astype(np.float64))) / 255.0)


def compute_image_metrics(gt_list, pred_list, metrics, lpips_metric=None, crop: int = 0):
    """Per-image metrics of predictions against ground truths (uint8 HxWx3 arrays, same order).

    ``metrics`` is a subset of ``IMAGE_METRICS``; returns a DataFrame with one column per
    requested metric (in the order given), one row per pair. ``crop`` applies to PSNR and SSIM.
    LPIPS needs ``lpips_metric`` (an ``LPIPSMetric``); it is NaN when that one is unavailable.
    """
    import pandas as pd

    metrics = list(metrics)
    unknown = [m for m in metrics if m not in IMAGE_METRICS]
    if unknown:
        raise ValueError(f"unknown per-image metric(s) {unknown}; choose from {list(IMAGE_METRICS)}")
    if len(gt_list) != len(pred_list):
        raise ValueError(f"{len(gt_list)} ground truths but {len(pred_list)} predictions")
    if "lpips" in metrics and lpips_metric is None:
        raise ValueError("metric 'lpips' needs lpips_metric=LPIPSMetric(...)")
    simple = {"psnr": lambda g, p: psnr(g, p, crop), "ssim": lambda g, p: ssim(g, p, crop), "l1": l1}
    columns = {}
    for name in metrics:
        if name == "lpips":
            columns[name] = lpips_metric(gt_list, pred_list)
        else:
            columns[name] = np.array([simple[name](g, p) for g, p in zip(gt_list, pred_list)], dtype=np.float64)
    return pd.DataFrame(columns, columns=metrics)


# ----------------------------------------------------------------------------- weights and devices

def hub_checkpoint_dir() -> Path:
    """The folder where torch.hub (and torchvision, lpips, pytorch-fid) look for cached weights."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights(filename: str, local_path=None, setting: str = "") -> tuple[Path | None, str]:
    """Locate a weights file without downloading: ``local_path`` if given, else the hub cache.

    Returns (path, "") when found, else (None, reason) with a reason that says where to put it.
    """
    if local_path:
        path = Path(local_path).expanduser()
        if path.is_file():
            return path, ""
        return None, (f"{path} (given as {setting}) does not exist; put {filename} there, or into "
                      f"$TORCH_HOME/hub/checkpoints/ (currently {hub_checkpoint_dir()}) and unset {setting}")
    cached = hub_checkpoint_dir() / filename
    if cached.is_file():
        return cached, ""
    return None, (f"put {filename} into $TORCH_HOME/hub/checkpoints/ (currently {hub_checkpoint_dir()}) "
                  f"or set {setting}; online, `strdiffusion weights fetch` downloads it")


@contextlib.contextmanager
def _hub_serving(filename: str, path: Path):
    """Let torch.hub find ``path`` under ``filename`` so the packages' loaders use it offline.

    When ``path`` is not the hub cache's own file, a temporary hub folder holding a link to it is
    set for the duration; the previous setting (possibly "follow $TORCH_HOME") is restored.
    """
    import torch

    cached = hub_checkpoint_dir() / filename
    if cached.is_file() and cached.resolve() == Path(path).resolve():
        yield
        return
    with tempfile.TemporaryDirectory(prefix="strdiffusion-hub-") as tmp:
        target = Path(tmp) / "checkpoints" / filename
        target.parent.mkdir()
        try:
            target.symlink_to(Path(path).resolve())
        except OSError:
            shutil.copyfile(path, target)
        previous = getattr(torch.hub, "_hub_dir", None)  # None means: follow $TORCH_HOME
        torch.hub.set_dir(tmp)
        try:
            yield
        finally:
            torch.hub._hub_dir = previous


@contextlib.contextmanager
def _loading(path: Path, what: str):
    try:
        yield
    except Exception as exc:  # a truncated download, a wrong file: say which file to replace
        raise UserError(f"{path}: cannot load the {what} weights from this file "
                        f"({exc.__class__.__name__}: {str(exc)[:200]}); delete or replace it") from None


def _batches(items_a, items_b, batch_size: int):
    """Yield index lists of at most ``batch_size`` consecutive items that share one shape."""
    for idx in equal_size_runs([np.shape(a) for a in items_a], batch_size):
        shape = np.shape(items_a[idx[0]])
        for i in idx:
            if items_b is not None and np.shape(items_b[i]) != shape:
                raise ValueError(f"pair {i}: images differ in shape: {shape} vs {np.shape(items_b[i])}")
        yield idx


def _to_tensor(images, idx, device):
    """uint8 HxWx3 arrays -> float32 Nx3xHxW tensor in [0, 1] (as torchvision's ToTensor)."""
    import torch

    batch = np.stack([np.asarray(images[i], dtype=np.uint8) for i in idx])
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected uint8 HxWx3 images, got a batch of shape {batch.shape}")
    return torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div(255)


# ----------------------------------------------------------------------------- networks

class LPIPSMetric:
    """LPIPS (AlexNet, v0.1) distance of uint8 image pairs; batched, on ``device``.

    ``available`` is False (and ``reason`` says why) when the AlexNet trunk weights are neither at
    ``alexnet_weights`` nor in the hub cache; calls then return NaN.
    """

    def __init__(self, device="cpu", alexnet_weights=None, batch_size: int = 16):
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.weights_path, self.reason = find_weights(
            ALEXNET_FILE, alexnet_weights, "metrics.alexnet_weights (--alexnet-weights)")
        self.available = self.weights_path is not None
        self.model = None
        if self.available:
            import lpips

            with _hub_serving(ALEXNET_FILE, self.weights_path), _loading(self.weights_path, "AlexNet"), \
                    warnings.catch_warnings():
                # lpips asks torchvision for alexnet(pretrained=True), which warns that it is deprecated
                warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
                model = lpips.LPIPS(net="alex", version="0.1", verbose=False)
            self.model = model.to(self.device).eval()

    def __call__(self, a_batch, b_batch) -> np.ndarray:
        """Distances (float64, one per pair) of two equal-length sequences of uint8 HxWx3 images."""
        import torch

        if len(a_batch) != len(b_batch):
            raise ValueError(f"{len(a_batch)} images vs {len(b_batch)} images")
        out = np.full(len(a_batch), np.nan)
        if not self.available:
            return out
        with torch.inference_mode():
            for idx in _batches(a_batch, b_batch, self.batch_size):
                x = _to_tensor(a_batch, idx, self.device) * 2 - 1
                y = _to_tensor(b_batch, idx, self.device) * 2 - 1
                out[idx] = self.model(x, y).reshape(-1).double().cpu().numpy()
        return out


class InceptionFeatures:
    """2048-d pool3 features of pytorch-fid's FID Inception for uint8 HxWx3 images; batched.

    The network resizes to 299x299 bilinearly and scales [0, 1] to [-1, 1] itself, exactly as in
    ``pytorch_fid.fid_score.get_activations``. ``available``/``reason`` as in ``LPIPSMetric``.
    """

    dims = 2048

    def __init__(self, device="cpu", weights=None, batch_size: int = 16):
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.weights_path, self.reason = find_weights(
            INCEPTION_FILE, weights, "metrics.inception_weights (--inception-weights)")
        self.available = self.weights_path is not None
        self.model = None
        if self.available:
            from pytorch_fid.inception import InceptionV3

            with _hub_serving(INCEPTION_FILE, self.weights_path), _loading(self.weights_path, "FID Inception"):
                model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[self.dims]])
            self.model = model.to(self.device).eval()

    def __call__(self, images) -> np.ndarray:
        """Features as a float64 N x 2048 array."""
        import torch

        if not self.available:
            raise RuntimeError(f"Inception weights unavailable: {self.reason}")
        feats = np.empty((len(images), self.dims))
        with torch.inference_mode():
            for idx in _batches(images, None, self.batch_size):
                pred = self.model(_to_tensor(images, idx, self.device))[0]
                feats[idx] = pred.reshape(len(idx), self.dims).cpu().numpy()
        return feats


# ----------------------------------------------------------------------------- set metrics

FID_METHODS = ("pytorch-fid", "exact")


def fid_from_features(f1, f2, method: str = "pytorch-fid") -> float:
    """FID of two feature sets (N x d), from their means and sample covariances.

    ``method="pytorch-fid"``: pytorch-fid's ``calculate_frechet_distance`` (scipy ``sqrtm`` of the
    d x d product; with fewer samples than dimensions the covariances are singular and it adds
    1e-6 to their diagonals; it raises ValueError when the root has a large imaginary part).
    ``method="exact"``: ``frechet_distance_exact``, the same quantity without ``sqrtm``.
    Raises ValueError with fewer than 2 samples in a set.
    """
    from pytorch_fid.fid_score import calculate_frechet_distance

    f1, f2 = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    if min(len(f1), len(f2)) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {len(f1)} and {len(f2)}")
    if method == "exact":
        return frechet_distance_exact(f1, f2)
    if method != "pytorch-fid":
        raise ValueError(f"unknown FID method '{method}'; choose from {list(FID_METHODS)}")
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    sigma1, sigma2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        # pytorch-fid prints its eps notice to stdout, and passes sqrtm(disp=False), which
        # SciPy >= 1.16 flags as deprecated
        warnings.filterwarnings("ignore", message=".*disp.*", category=DeprecationWarning)
        return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))


def frechet_distance_exact(f1, f2) -> float:
    """|mu1 - mu2|^2 + Tr S1 + Tr S2 - 2 Tr sqrt(S1 S2) with sample covariances S (ddof 1).

    Tr sqrt(S1 S2) is the sum of the square roots of the (non-negative) eigenvalues of S1 S2.
    With centred features A1, A2 these are the squared singular values of
    A1 A2^T / sqrt((n1-1)(n2-1)), so small sets need only an n1 x n2 SVD; large sets use the
    symmetric eigenvalues of S2^1/2 S1 S2^1/2. Unlike ``sqrtm`` this is stable for the singular
    covariances of sets smaller than the feature dimension, and takes seconds instead of minutes.
    """
    f1, f2 = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    (n1, d), n2 = f1.shape, len(f2)
    if min(n1, n2) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {n1} and {n2}")
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    a1, a2 = f1 - mu1, f2 - mu2
    if n1 * n2 <= d * d:
        tr_sqrt = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum() / math.sqrt((n1 - 1) * (n2 - 1))
    else:
        s1, s2 = a1.T @ a1 / (n1 - 1), a2.T @ a2 / (n2 - 1)
        w, v = np.linalg.eigh(s2)
        s2_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(s2_half @ s1 @ s2_half), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + (a1 ** 2).sum() / (n1 - 1) + (a2 ** 2).sum() / (n2 - 1) - 2 * tr_sqrt)


def _polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d, m = x.shape[1], len(x)
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def kid_from_features(f1, f2, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (mean, std) of two feature sets: unbiased polynomial MMD^2 over random subsets.

    Each of ``subsets`` draws picks min(n1, n2, subset_size) rows of each set without
    replacement (numpy RandomState(seed)); std is the population std over subsets. When the
    subset size equals both set sizes every draw is the whole set, so it is computed once, std 0.
    """
    f1, f2 = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    n1, n2 = len(f1), len(f2)
    m = min(n1, n2, int(subset_size))
    if m < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {n1} and {n2}")
    if m == n1 == n2:
        return _polynomial_mmd2_unbiased(f1, f2), 0.0
    rng = np.random.RandomState(seed)
    mmds = np.empty(int(subsets))
    for i in range(int(subsets)):
        x = f1[rng.choice(n1, m, replace=False)]
        y = f2[rng.choice(n2, m, replace=False)]
        mmds[i] = _polynomial_mmd2_unbiased(x, y)
    return float(mmds.mean()), float(mmds.std())


def fid_backend(method: str = "pytorch-fid") -> str:
    """Name of what computed FID/KID, for the tables: features and Frechet distance."""
    import pytorch_fid

    name = f"pytorch-fid {pytorch_fid.__version__}"
    return name if method == "pytorch-fid" else f"{name} features, exact Frechet distance"


# ----------------------------------------------------------------------------- CLI

def _parse_metrics(text: str, allowed) -> list[str]:
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise UserError(f"--metrics {text}: choose a comma-separated subset of {','.join(allowed)}")
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
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument("--batch-size", type=int, default=16, help="images per network batch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="strdiffusion metrics",
        description="Metrics on whole composited images against the ground truth. Missing pretrained "
                    "weights give NaN and a reason in <out stem>.status.json; nothing is downloaded.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("images", help="PSNR, SSIM, L1, LPIPS per image")
    _common_args(p)
    p.add_argument("--metrics", default="psnr,ssim,l1,lpips", help="subset of psnr,ssim,l1,lpips")
    p.add_argument("--crop", type=int, default=0, help="border in px removed before PSNR and SSIM (IR-SDE: 4)")
    p.add_argument("--alexnet-weights", default=None,
                   help=f"local {ALEXNET_FILE} (default: the torch hub cache)")
    p = sub.add_parser("sets", help="FID and KID of the set against its ground truths")
    _common_args(p)
    p.add_argument("--metrics", default="fid,kid", help="subset of fid,kid")
    p.add_argument("--inception-weights", default=None,
                   help=f"local {INCEPTION_FILE} (default: the torch hub cache)")
    p.add_argument("--fid-method", choices=FID_METHODS, default="pytorch-fid",
                   help="pytorch-fid: its calculate_frechet_distance (scipy sqrtm of 2048x2048, about "
                        "25-100 s per set on a 2-core CPU; falls back to exact if it fails); exact: the "
                        "same distance from an SVD/eigendecomposition (seconds, stable for small sets)")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=1000)
    return parser


def _run_images(args) -> None:
    import pandas as pd

    metrics = _parse_metrics(args.metrics, IMAGE_METRICS)
    if args.crop < 0:
        raise UserError(f"--crop {args.crop}: must be >= 0")
    ids = load_pair_ids(args.pairs, args.bin)
    gts, preds = load_image_pairs(ids, args.gt_dir, args.pred_dir)
    status = {m: {"available": True, "reason": ""} for m in metrics}
    lpips_metric = None
    if "lpips" in metrics:
        lpips_metric = LPIPSMetric(args.device, args.alexnet_weights, args.batch_size)
        if not lpips_metric.available:
            status["lpips"] = {"available": False, "reason": f"LPIPS n/a: {lpips_metric.reason}"}
            log.warning("%s", status["lpips"]["reason"])
    started = time.perf_counter()
    try:
        values = compute_image_metrics(gts, preds, metrics, lpips_metric, crop=args.crop)
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


def _run_sets(args) -> None:
    import pandas as pd

    metrics = _parse_metrics(args.metrics, SET_METRICS)
    ids = load_pair_ids(args.pairs, args.bin)
    gts, preds = load_image_pairs(ids, args.gt_dir, args.pred_dir)
    n = len(ids)
    row = {"method": args.method, "bin": args.bin, "n_images": n}
    if "fid" in metrics:
        row["fid"] = math.nan
    if "kid" in metrics:
        row.update(kid_mean=math.nan, kid_std=math.nan)
    row["fid_backend"] = fid_backend(args.fid_method)
    status = {m: {"available": True, "reason": ""} for m in metrics}

    def unavailable(reason: str, which=metrics) -> None:
        for m in which:
            status[m] = {"available": False, "reason": f"{m.upper()} n/a: {reason}"}
            log.warning("%s", status[m]["reason"])

    if n < 2:
        unavailable(f"too few images ({n}; at least 2 are needed)")
    else:
        features = InceptionFeatures(args.device, args.inception_weights, args.batch_size)
        if not features.available:
            unavailable(features.reason)
        else:
            started = time.perf_counter()
            f_gt, f_pred = features(gts), features(preds)
            log.info("Inception features of %d images in %.1f s", 2 * n, time.perf_counter() - started)
            if "fid" in metrics:
                started = time.perf_counter()
                try:
                    row["fid"] = fid_from_features(f_pred, f_gt, args.fid_method)
                except ValueError as exc:  # pytorch-fid: "Imaginary component" from sqrtm
                    row["fid"] = fid_from_features(f_pred, f_gt, "exact")
                    row["fid_backend"] = fid_backend("exact")
                    status["fid"]["reason"] = (f"pytorch-fid's calculate_frechet_distance failed ({exc}); "
                                               "FID computed with --fid-method exact instead")
                    log.warning("%s", status["fid"]["reason"])
                log.info("Frechet distance (%s) in %.1f s", row["fid_backend"], time.perf_counter() - started)
            if "kid" in metrics:
                row["kid_mean"], row["kid_std"] = kid_from_features(
                    f_pred, f_gt, args.kid_subsets, args.kid_subset_size)
    write_csv_atomic(pd.DataFrame([row]), args.out)
    _write_status(args.out, status)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.command == "sets" and (args.kid_subsets < 1 or args.kid_subset_size < 2):
        raise UserError("--kid-subsets must be >= 1 and --kid-subset-size >= 2")
    if args.command == "images":
        _run_images(args)
    else:
        _run_sets(args)
    return 0
