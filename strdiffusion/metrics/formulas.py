"""The metrics' maths: PSNR, SSIM and L1 of image pairs, FID and KID of feature sets (no files, no networks).

Conventions (see the spec's "Metric conventions"):
- Every metric is computed on the WHOLE composited image against its ground truth, both uint8
  HxWx3 RGB of the same size.
- PSNR: float64, data range 255. Identical images give ``inf`` (written as ``inf`` in the CSV;
  tables decide how to show it). ``crop`` removes a border of that many pixels first (IR-SDE: 4).
- SSIM: skimage with Wang et al.'s settings (Gaussian window, sigma 1.5, population covariance),
  on the same crop as PSNR. skimage's defaults (7x7 uniform window) give different numbers.
- L1: mean absolute error in [0, 1] units, whole image (no crop).
- LPIPS: computed by a callable passed in (``nets.LPIPSMetric``), whole image.
- FID: pytorch-fid 0.3.0's ``calculate_frechet_distance`` of two feature sets (2048-d pool3 features
  from ``nets.InceptionFeatures``). Its scipy ``sqrtm`` is slow on CPU and can fail on small
  sets ("Imaginary component"); ``method="exact"`` computes the same distance from an SVD / symmetric
  eigendecomposition.
- KID: unbiased MMD^2 with the kernel (x.y/d + 1)^3 on the same features, mean and std over
  subsets (torch-fidelity's definition; our subset seed is 0).
"""
from __future__ import annotations

import contextlib
import math
import sys
import warnings

import numpy as np

from strdiffusion.settings.methods import FID_METHODS, IMAGE_METRICS

SSIM_SETTINGS = dict(data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                     use_sample_covariance=False)


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



def fid_from_features(f1, f2, method: str = "pytorch-fid") -> float:
    """FID of two feature sets (N x d), from their means and sample covariances.

    ``method="pytorch-fid"``: pytorch-fid's ``calculate_frechet_distance`` (scipy ``sqrtm`` of the
    d x d product; with fewer samples than dimensions the covariances are singular and it adds
    1e-6 to their diagonals; it raises ValueError when the root has a large imaginary part).
    ``method="exact"``: ``frechet_distance_exact``, the same quantity without ``sqrtm``.
    Raises ValueError with fewer than 2 samples in a set.
    """
    from pytorch_fid.fid_score import calculate_frechet_distance

    f1, f2 = _features(f1), _features(f2)
    if min(len(f1), len(f2)) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {len(f1)} and {len(f2)}")
    if method == "exact":
        return frechet_distance_exact(f1, f2)
    if method != "pytorch-fid":
        raise ValueError(f"unknown FID method '{method}'; choose from {list(FID_METHODS)}")
    (mu1, sigma1), (mu2, sigma2) = mean_and_cov(f1), mean_and_cov(f2)
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
    symmetric eigenvalues of B^T S1 B with S2 = B B^T (those of S2^1/2 S1 S2^1/2).
    Unlike ``sqrtm`` this is stable for the singular covariances of sets smaller than the feature dimension, and takes seconds instead of minutes.
    """
    f1, f2 = _features(f1), _features(f2)
    (n1, d), n2 = f1.shape, len(f2)
    if min(n1, n2) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {n1} and {n2}")
    if n1 * n2 <= d * d:
        mu1, mu2 = f1.mean(axis=0, dtype=np.float64), f2.mean(axis=0, dtype=np.float64)
        a1, a2 = f1 - mu1, f2 - mu2
        tr_sqrt = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum() / math.sqrt((n1 - 1) * (n2 - 1))
        tr1, tr2 = (a1 ** 2).sum() / (n1 - 1), (a2 ** 2).sum() / (n2 - 1)
    else:
        # with S2 = B B^T (B = V W^1/2 from S2's eigendecomposition), S1 S2 has the eigenvalues of
        # the symmetric B^T S1 B; LAPACK's MRRR driver (small workspace) on arrays it may overwrite,
        # in an order that keeps at most three d x d arrays alive: memory stays that of the features
        from scipy.linalg import eigh

        mu2, s2 = mean_and_cov(f2)
        tr2 = np.trace(s2)
        # .T: the Fortran-ordered view of a symmetric matrix, which LAPACK takes without a copy
        w, b = eigh(s2.T, driver="evr", overwrite_a=True, check_finite=False)
        del s2
        b *= np.sqrt(np.clip(w, 0, None))
        mu1, s1 = mean_and_cov(f1)
        tr1 = np.trace(s1)
        m = b.T @ s1
        del s1
        m = m @ b
        del b
        eig = eigh(m.T, eigvals_only=True, driver="evr", overwrite_a=True, check_finite=False)
        tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + tr1 + tr2 - 2 * tr_sqrt)


def mean_and_cov(f, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample covariance (ddof 1, as ``np.cov(f, rowvar=False)``) of the rows of ``f``.

    Centred ``chunk`` rows at a time, so that a large set (36,500 x 2048) needs no centred copy of
    its features beside them: memory is the features and the d x d result.
    """
    f = _features(f)
    n, d = f.shape
    mu = f.mean(axis=0, dtype=np.float64)
    s, product = np.zeros((d, d)), np.empty((d, d))
    for start in range(0, n, chunk):
        a = f[start:start + chunk] - mu
        np.dot(a.T, a, out=product)
        s += product
    del product
    s /= n - 1
    return mu, s


def _features(f) -> np.ndarray:
    """A feature set as an array without copying: float32 (the networks' output, stored as is to
    halve the memory of large sets) or float64; every sum below is taken in float64."""
    f = np.asarray(f)
    return f if f.dtype in (np.float32, np.float64) else f.astype(np.float64)


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
    f1, f2 = _features(f1), _features(f2)
    n1, n2 = len(f1), len(f2)
    m = min(n1, n2, int(subset_size))
    if m < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {n1} and {n2}")
    if m == n1 == n2:
        return _polynomial_mmd2_unbiased(f1.astype(np.float64), f2.astype(np.float64)), 0.0
    rng = np.random.RandomState(seed)
    mmds = np.empty(int(subsets))
    for i in range(int(subsets)):
        x = f1[rng.choice(n1, m, replace=False)].astype(np.float64)
        y = f2[rng.choice(n2, m, replace=False)].astype(np.float64)
        mmds[i] = _polynomial_mmd2_unbiased(x, y)
    return float(mmds.mean()), float(mmds.std())


def fid_backend(method: str = "pytorch-fid") -> str:
    """Name of what computed FID/KID, for the tables: features and Frechet distance."""
    import pytorch_fid

    name = f"pytorch-fid {pytorch_fid.__version__}"
    return name if method == "pytorch-fid" else f"{name} features, exact Frechet distance"
