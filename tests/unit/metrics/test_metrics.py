"""Tests for strdiffusion/metrics/evaluate.py (the stage), formulas.py and nets.py.

Pretrained weights cannot be downloaded here, so the LPIPS / FID tests write random-weight
stand-ins with the real file names into a temporary $TORCH_HOME and go through the packages' real
loading code. Numbers from stand-ins only check agreement with the reference implementations.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from support.images import noisy, photo, write_set

from strdiffusion.io.errors import UserError
from strdiffusion.metrics import evaluate as M
from strdiffusion.metrics import formulas as MM
from strdiffusion.metrics import nets as MN
from strdiffusion.stages import metrics as metrics_stage
from strdiffusion.stages import tables as tables_stage

# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """Folder with stand-in pt_inception-...pth and alexnet-owt-...pth (random weights)."""
    d = tmp_path_factory.mktemp("weights")
    MN.write_standin_weights(d)
    return d


@pytest.fixture
def standin_home(weights_dir, tmp_path, monkeypatch):
    """A $TORCH_HOME whose hub cache holds the stand-in weights (as links)."""
    ck = tmp_path / "torch_home" / "hub" / "checkpoints"
    ck.mkdir(parents=True)
    for name in (MN.INCEPTION_FILE, MN.ALEXNET_FILE):
        (ck / name).symlink_to(weights_dir / name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return ck


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    home = tmp_path / "empty_torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home / "hub" / "checkpoints"



def _cli(cmd, pairs, gt_dir, pred_dir, out, *extra, bin_label="10-20"):
    return metrics_stage.main([cmd, "--pairs", str(pairs), "--gt-dir", str(gt_dir), "--pred-dir", str(pred_dir),
                   "--method", "toy", "--bin", bin_label, "--out", str(out), "--device", "cpu", *extra])


# ----------------------------------------------------------------------------- PSNR, SSIM, L1

def test_psnr_known_value_and_no_uint8_wraparound():
    a = np.full((16, 16, 3), 100, np.uint8)
    b = np.full((16, 16, 3), 110, np.uint8)
    expected = 20 * math.log10(255 / 10)
    assert MM.psnr(a, b) == pytest.approx(expected, abs=1e-12)
    assert MM.psnr(b, a) == pytest.approx(expected, abs=1e-12)  # a < b: uint8 a - b would wrap to 246
    assert MM.psnr(a, a) == math.inf


def test_psnr_crop_removes_border():
    a = photo(32)
    b = a.copy()
    b[:2] = 0  # damage only the top 2 rows
    assert math.isfinite(MM.psnr(a, b))
    assert MM.psnr(a, b, crop=2) == math.inf
    with pytest.raises(ValueError):
        MM.psnr(a, b, crop=16)


def test_ssim_wang_settings_match_skimage_and_differ_from_defaults():
    from skimage.metrics import structural_similarity

    a = photo(64)
    b = noisy(a, 20, seed=3)
    assert MM.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    wang = structural_similarity(a, b, data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)
    default = structural_similarity(a, b, data_range=255, channel_axis=-1)
    assert MM.ssim(a, b) == pytest.approx(wang, abs=1e-12)
    assert abs(MM.ssim(a, b) - default) > 1e-3
    cropped = structural_similarity(a[4:-4, 4:-4], b[4:-4, 4:-4], data_range=255, channel_axis=-1,
                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert MM.ssim(a, b, crop=4) == pytest.approx(cropped, abs=1e-12)


def test_l1_known_value():
    a = np.full((8, 8, 3), 200, np.uint8)
    b = a.copy()
    b[:4] = 149  # half the pixels off by 51 = 0.2 in [0, 1] units
    assert MM.l1(a, b) == pytest.approx(0.1, abs=1e-12)
    assert MM.l1(b, a) == pytest.approx(0.1, abs=1e-12)
    assert MM.l1(a, a) == 0.0


def test_compute_image_metrics_columns_values_and_errors():
    gts = [photo(32, s) for s in range(3)]
    preds = [noisy(g, 10, s) for s, g in enumerate(gts)]
    df = MM.compute_image_metrics(gts, preds, ["psnr", "ssim", "l1"], crop=2)
    assert list(df.columns) == ["psnr", "ssim", "l1"] and len(df) == 3
    assert df["psnr"].tolist() == [MM.psnr(g, p, crop=2) for g, p in zip(gts, preds)]
    assert df["ssim"].tolist() == [MM.ssim(g, p, crop=2) for g, p in zip(gts, preds)]
    assert df["l1"].tolist() == [MM.l1(g, p) for g, p in zip(gts, preds)]
    with pytest.raises(ValueError, match="unknown"):
        MM.compute_image_metrics(gts, preds, ["psnr", "mse"])
    with pytest.raises(ValueError, match="lpips_metric"):
        MM.compute_image_metrics(gts, preds, ["lpips"])
    with pytest.raises(ValueError, match="shape"):
        MM.compute_image_metrics(gts[:1], [photo(16)], ["psnr"])


# ----------------------------------------------------------------------------- LPIPS

def test_lpips_matches_direct_lpips_call(standin_home):
    import lpips

    gts = [photo(64, s) for s in range(4)] + [photo(48, 9)]  # two sizes: batches split by shape
    preds = [noisy(g, 25, s) for s, g in enumerate(gts)]
    metric = MN.LPIPSMetric("cpu", batch_size=3)
    assert metric.available and metric.reason == ""
    assert Path(metric.weights_path) == standin_home / MN.ALEXNET_FILE
    ours = metric(gts, preds)

    ref_net = lpips.LPIPS(net="alex", version="0.1", verbose=False).eval()  # same cached stand-in trunk
    with torch.no_grad():
        ref = [ref_net(lpips.im2tensor(g), lpips.im2tensor(p)).item() for g, p in zip(gts, preds)]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)
    assert np.all(ours > 0)
    assert np.all(metric(gts, gts) == 0)


def test_lpips_local_weights_path_and_hub_dir_restored(weights_dir, empty_home):
    assert not MN.LPIPSMetric("cpu").available
    metric = MN.LPIPSMetric("cpu", alexnet_weights=weights_dir / MN.ALEXNET_FILE)
    assert metric.available
    assert Path(torch.hub.get_dir()) == empty_home.parent  # the temporary hub folder is gone again
    a, b = photo(32), noisy(photo(32), 30, 1)
    assert metric([a], [b])[0] > 0


def test_lpips_missing_weights_gives_nan_and_reason(empty_home):
    metric = MN.LPIPSMetric("cpu")
    assert not metric.available
    assert MN.ALEXNET_FILE in metric.reason and str(empty_home) in metric.reason
    assert "metrics.alexnet_weights" in metric.reason
    out = metric([photo(32)], [photo(32, 1)])
    assert out.shape == (1,) and np.isnan(out[0])
    missing = MN.LPIPSMetric("cpu", alexnet_weights="/nonexistent/alex.pth")
    assert not missing.available and "/nonexistent/alex.pth" in missing.reason


def test_lpips_corrupt_weights_file_is_a_user_error(empty_home):
    empty_home.mkdir(parents=True)
    (empty_home / MN.ALEXNET_FILE).write_bytes(b"truncated download")
    with pytest.raises(UserError, match=MN.ALEXNET_FILE):
        MN.LPIPSMetric("cpu")


def test_lpips_images_cli_with_and_without_weights(tmp_path, standin_home, monkeypatch):
    pairs, gt_dir, pred_dir, gts, preds = write_set(tmp_path / "data", n=4)
    out = tmp_path / "res" / "per_image.csv"
    assert _cli("images", pairs, gt_dir, pred_dir, out, "--metrics", "psnr,ssim,l1,lpips", "--crop", "4") == 0
    df = pd.read_csv(out, dtype={"bin": str})
    assert list(df.columns) == ["method", "bin", "image_id", "psnr", "ssim", "l1", "lpips"]
    assert df["image_id"].tolist() == [f"img{i:03d}" for i in range(4)]
    assert (df["method"] == "toy").all() and (df["bin"] == "10-20").all()
    np.testing.assert_allclose(df["psnr"], [MM.psnr(g, p, crop=4) for g, p in zip(gts, preds)], rtol=1e-12)
    np.testing.assert_allclose(df["lpips"], MN.LPIPSMetric("cpu")(gts, preds), rtol=1e-6)
    status = json.loads((tmp_path / "res" / "per_image.status.json").read_text())
    assert status["lpips"] == {"available": True, "reason": ""}

    empty = tmp_path / "empty_home"
    empty.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(empty))
    assert _cli("images", pairs, gt_dir, pred_dir, out) == 0
    df = pd.read_csv(out)
    assert df["lpips"].isna().all() and np.isfinite(df["psnr"]).all()
    status = json.loads((tmp_path / "res" / "per_image.status.json").read_text())
    assert status["lpips"]["available"] is False
    assert MN.ALEXNET_FILE in status["lpips"]["reason"]
    assert str(empty / "hub" / "checkpoints") in status["lpips"]["reason"]
    assert status["psnr"]["available"] is True


# ----------------------------------------------------------------------------- FID features, FID, KID

def _frechet_exact(f1, f2):
    """Exact FID from features without a d x d matrix square root: with centred features A1, A2,
    Tr sqrt(S1 S2) is the sum of the singular values of A1 A2^T / sqrt((n1-1)(n2-1))."""
    a1, a2 = f1 - f1.mean(0), f2 - f2.mean(0)
    tr_sqrt = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum() / math.sqrt((len(f1) - 1) * (len(f2) - 1))
    diff = f1.mean(0) - f2.mean(0)
    return diff @ diff + (a1 ** 2).sum() / (len(f1) - 1) + (a2 ** 2).sum() / (len(f2) - 1) - 2 * tr_sqrt


def _mmd2_unbiased_loops(x, y):
    """Direct unbiased MMD^2 with k(a, b) = (a.b/d + 1)^3, written out term by term."""
    m, d = len(x), x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_fid_from_features_low_dim_known_values():
    from scipy import linalg

    rng = np.random.default_rng(0)
    f1 = rng.normal(size=(60, 6))
    f2 = rng.normal(size=(50, 6)) @ np.diag([1, 2, 1, 0.5, 1, 1]) + 0.7
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    d = f1.mean(0) - f2.mean(0)
    expected = d @ d + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert MM.fid_from_features(f1, f2) == pytest.approx(expected, rel=1e-9)
    assert MM.fid_from_features(f1, f2, "exact") == pytest.approx(expected, rel=1e-9)  # eigh branch
    assert MM.frechet_distance_exact(f1, f2) == pytest.approx(_frechet_exact(f1, f2), rel=1e-9)
    assert abs(MM.fid_from_features(f1, f1)) < 1e-9 and abs(MM.fid_from_features(f1, f1, "exact")) < 1e-9
    with pytest.raises(ValueError, match="at least 2"):
        MM.fid_from_features(f1[:1], f2)
    with pytest.raises(ValueError, match="unknown FID method"):
        MM.fid_from_features(f1, f2, "clean-fid")


def test_fid_exact_small_sets_agree_with_pytorch_fid():
    # fewer samples than dimensions: singular covariances, the SVD branch of the exact method
    rng = np.random.default_rng(5)
    basis = rng.random((4, 40))
    f1 = np.maximum(rng.normal(size=(9, 4)) @ basis, 0)
    f2 = np.maximum(rng.normal(size=(7, 4)) @ basis + 0.2, 0)
    exact = MM.fid_from_features(f1, f2, "exact")
    assert exact == pytest.approx(_frechet_exact(f1, f2), rel=1e-12)
    assert exact == pytest.approx(MM.fid_from_features(f1, f2, "pytorch-fid"), rel=1e-4)


def test_kid_identical_sets_closed_form_and_shift_positive():
    rng = np.random.default_rng(1)
    f = rng.random((40, 32))
    mean, std = MM.kid_from_features(f, f)
    # unbiased estimator on a set against itself: -2 (mean diagonal k - mean off-diagonal k) / m
    k = (f @ f.T / 32 + 1) ** 3
    m = len(f)
    off = (k.sum() - np.trace(k)) / (m * (m - 1))
    assert mean == pytest.approx(-2 * (np.trace(k) / m - off) / m, rel=1e-9)
    assert std == 0.0
    shifted, _ = MM.kid_from_features(f, f + 0.3)
    assert shifted > 10 * abs(mean)


def test_kid_subsets_match_direct_unbiased_estimator():
    rng = np.random.default_rng(2)
    f1, f2 = rng.random((30, 8)), rng.random((25, 8)) + 0.05
    # one subset of 10: the same draws as numpy RandomState(seed), then the estimator by loops
    r = np.random.RandomState(7)
    i1, i2 = r.choice(30, 10, replace=False), r.choice(25, 10, replace=False)
    mean, std = MM.kid_from_features(f1, f2, subsets=1, subset_size=10, seed=7)
    assert mean == pytest.approx(_mmd2_unbiased_loops(f1[i1], f2[i2]), rel=1e-10) and std == 0.0
    # several subsets: mean and population std of the per-subset values; size capped at min(n)
    r = np.random.RandomState(0)
    vals = []
    for _ in range(5):
        a, b = r.choice(30, 25, replace=False), r.choice(25, 25, replace=False)
        vals.append(_mmd2_unbiased_loops(f1[a], f2[b]))
    mean, std = MM.kid_from_features(f1, f2, subsets=5, subset_size=1000, seed=0)
    assert mean == pytest.approx(np.mean(vals), rel=1e-10)
    assert std == pytest.approx(np.std(vals), rel=1e-8) and std > 0
    with pytest.raises(ValueError, match="at least 2"):
        MM.kid_from_features(f1[:1], f2)


def test_fid_kid_sets_cli_matches_pytorch_fid(tmp_path, standin_home):
    """The CLI's FID/KID against pytorch-fid's own feature extraction of the same PNG files."""
    from pytorch_fid.fid_score import get_activations
    from pytorch_fid.inception import InceptionV3

    pairs, gt_dir, pred_dir, gts, preds = write_set(tmp_path / "data", n=4, size=64)
    out = tmp_path / "res" / "set.csv"
    # exact: pytorch-fid's 2048x2048 sqrtm would take minutes here
    assert _cli("sets", pairs, gt_dir, pred_dir, out, "--batch-size", "3", "--fid-method", "exact") == 0
    row = pd.read_csv(out, dtype={"bin": str}).iloc[0]
    assert list(row.index) == ["method", "bin", "n_images", "fid", "kid_mean", "kid_std", "fid_backend"]
    assert row["n_images"] == 4 and row["bin"] == "10-20"
    assert row["fid_backend"] == "pytorch-fid 0.3.0 features, exact Frechet distance"
    status = json.loads((tmp_path / "res" / "set.status.json").read_text())
    assert status == {"fid": {"available": True, "reason": ""}, "kid": {"available": True, "reason": ""}}

    model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()  # loads the cached stand-in
    ref_gt = get_activations(sorted(map(str, gt_dir.glob("*.png"))), model, batch_size=4, num_workers=0)
    ref_pred = get_activations(sorted(map(str, pred_dir.glob("*.png"))), model, batch_size=4, num_workers=0)
    assert ref_gt.std() > 1e-3  # the stand-in's features are not degenerate
    ref_fid = _frechet_exact(ref_pred, ref_gt)
    assert ref_fid > 0
    assert row["fid"] == pytest.approx(ref_fid, rel=1e-3)
    assert row["kid_mean"] == pytest.approx(_mmd2_unbiased_loops(ref_pred, ref_gt), rel=1e-3, abs=1e-6)
    assert row["kid_std"] == 0.0  # 4 images < subset size: every subset is the whole set


class _FakeFeatures:
    """Stands in for InceptionFeatures in CLI-logic tests: cheap deterministic 'features'."""

    available, reason = True, ""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, images):
        return np.stack([np.asarray(im, dtype=np.float64)[::4, ::4].reshape(-1)[:64] / 255 for im in images])


def test_fid_cli_falls_back_to_exact_when_pytorch_fid_fails(tmp_path, monkeypatch):
    import pytorch_fid.fid_score

    def failing(*args, **kwargs):
        raise ValueError("Imaginary component 50.4")

    monkeypatch.setattr(pytorch_fid.fid_score, "calculate_frechet_distance", failing)
    monkeypatch.setattr(M, "InceptionFeatures", _FakeFeatures)
    pairs, gt_dir, pred_dir, gts, preds = write_set(tmp_path / "data", n=5, size=32)
    out = tmp_path / "set.csv"
    assert _cli("sets", pairs, gt_dir, pred_dir, out, "--metrics", "fid", "--fid-method", "pytorch-fid") == 0
    row = pd.read_csv(out).iloc[0]
    expected = MM.frechet_distance_exact(_FakeFeatures()(preds), _FakeFeatures()(gts))
    assert expected > 0 and row["fid"] == pytest.approx(expected, rel=1e-9)
    assert row["fid_backend"] == "pytorch-fid 0.3.0 features, exact Frechet distance"
    status = json.loads((tmp_path / "set.status.json").read_text())
    assert status["fid"]["available"] is True and "Imaginary component" in status["fid"]["reason"]


def test_inception_features_local_weights_path(standin_home, weights_dir):
    img = [photo(32)]
    from_cache = MN.InceptionFeatures("cpu")(img)
    assert from_cache.shape == (1, 2048) and np.isfinite(from_cache).all()
    # the same weights given as a local path outside the hub cache
    local = MN.InceptionFeatures("cpu", weights=weights_dir / MN.INCEPTION_FILE)
    assert local.available and Path(local.weights_path) == weights_dir / MN.INCEPTION_FILE
    np.testing.assert_allclose(local(img), from_cache, rtol=1e-5, atol=1e-7)
    assert Path(torch.hub.get_dir()) == standin_home.parent


def test_fid_kid_missing_weights_and_too_few_images(tmp_path, empty_home):
    pairs, gt_dir, pred_dir, _, _ = write_set(tmp_path / "data", n=3)
    out = tmp_path / "res" / "set.csv"
    assert _cli("sets", pairs, gt_dir, pred_dir, out) == 0
    row = pd.read_csv(out).iloc[0]
    assert row["n_images"] == 3 and np.isnan(row["fid"]) and np.isnan(row["kid_mean"])
    status = json.loads((tmp_path / "res" / "set.status.json").read_text())
    for name in ("fid", "kid"):
        assert status[name]["available"] is False
        assert status[name]["reason"].startswith(f"{name.upper()} n/a: put {MN.INCEPTION_FILE} into")
        assert str(empty_home) in status[name]["reason"]
        assert "metrics.inception_weights" in status[name]["reason"]
    assert not MN.InceptionFeatures("cpu", weights=tmp_path / "nope.pth").available

    one = tmp_path / "one.csv"
    pd.DataFrame([{"image_id": "img000", "bin": "10-20", "mask": "m.png"}]).to_csv(one, index=False)
    assert _cli("sets", one, gt_dir, pred_dir, out, "--metrics", "fid") == 0
    row = pd.read_csv(out).iloc[0]
    assert row["n_images"] == 1 and np.isnan(row["fid"]) and "kid_mean" not in row.index
    status = json.loads((tmp_path / "res" / "set.status.json").read_text())
    assert list(status) == ["fid"] and "too few images" in status["fid"]["reason"]


def test_empty_metric_lists_write_csvs_without_metric_columns_and_a_table_without_them(tmp_path, empty_home,
                                                                                      monkeypatch):
    """``metrics.per_set: []`` (the set rule then renders ``--metrics`` with no value) and an empty
    per-image list: the stage writes the CSVs without metric columns, and the tables stage builds a
    table without FID/KID from them."""
    from strdiffusion.reporting import tables as tables

    class _NoNetwork:
        def __init__(self, *args, **kwargs):
            raise AssertionError("no metric asked for, no network to load")

    monkeypatch.setattr(M, "InceptionFeatures", _NoNetwork)
    monkeypatch.setattr(M, "LPIPSMetric", _NoNetwork)
    pairs, gt_dir, pred_dir, _, _ = write_set(tmp_path / "data", n=4)
    res = tmp_path / "res"
    # the set rule's command line with metrics.per_set: [] (no value after --metrics)
    assert _cli("sets", pairs, gt_dir, pred_dir, res / "set.csv", "--metrics", "--fid-method", "exact") == 0
    assert _cli("sets", pairs, gt_dir, pred_dir, res / "set2.csv", "--metrics", "") == 0
    for name in ("set", "set2"):
        row = pd.read_csv(res / f"{name}.csv", dtype={"bin": str})
        assert list(row.columns) == ["method", "bin", "n_images"] and row.iloc[0].tolist() == ["toy", "10-20", 4]
        assert json.loads((res / f"{name}.status.json").read_text()) == {}
    assert _cli("images", pairs, gt_dir, pred_dir, res / "img_none.csv", "--metrics", "") == 0
    none = pd.read_csv(res / "img_none.csv", dtype={"bin": str})
    assert list(none.columns) == ["method", "bin", "image_id"]
    assert list(none.image_id) == [f"img{i:03d}" for i in range(4)]
    assert _cli("images", pairs, gt_dir, pred_dir, res / "per_image.csv", "--metrics", "psnr,ssim") == 0

    long, unavailable = tables.summarise([res / "per_image.csv"], [res / "set.csv"], ["toy"], ["10-20"])
    assert set(long.metric) == {"psnr", "ssim"} and unavailable == {}
    md, tex = tables.render(long, unavailable, ["toy"], ["10-20"], ["psnr", "ssim"], "x")
    assert "FID" not in md and "KID" not in md and "FID" not in tex and "n/a" not in md.split("\n\n95 %")[0]
    long, _ = tables.summarise([res / "img_none.csv"], [res / "set2.csv"], ["toy"], ["10-20"])
    assert long.empty
    prefix = tmp_path / "table" / "x"
    assert tables_stage.main(["--per-image", str(res / "per_image.csv"), "--sets", str(res / "set.csv"),
                        "--methods", "toy", "--bins", "10-20", "--columns", "psnr,ssim", "--dataset", "x",
                        "--out", str(prefix)]) == 0
    table = pd.read_csv(f"{prefix}.csv")
    assert set(table.metric) == {"psnr", "ssim"} and "FID" not in (tmp_path / "table" / "x.md").read_text()
    with pytest.raises(UserError, match="--metrics psnr,fid"):
        _cli("images", pairs, gt_dir, pred_dir, res / "bad.csv", "--metrics", "psnr,fid")


# ----------------------------------------------------------------------------- CLI input errors

def test_cli_errors_name_the_files(tmp_path, empty_home):
    pairs, gt_dir, pred_dir, _, _ = write_set(tmp_path / "data", n=3)
    out = tmp_path / "o.csv"
    (pred_dir / "img001.png").unlink()
    with pytest.raises(UserError, match=r"pred/img001\.png: prediction not found"):
        _cli("images", pairs, gt_dir, pred_dir, out, "--metrics", "psnr")
    Image.fromarray(photo(32)).save(pred_dir / "img001.png")
    with pytest.raises(UserError, match=r"pred/img001\.png is 32x32 but .*gt/img001\.png is 64x64"):
        _cli("images", pairs, gt_dir, pred_dir, out, "--metrics", "psnr")
    (pred_dir / "img001.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"img001\.png: cannot decode"):
        _cli("images", pairs, gt_dir, pred_dir, out, "--metrics", "psnr")
    with pytest.raises(UserError, match="no rows with bin '30-40'"):
        _cli("images", pairs, gt_dir, pred_dir, out, "--metrics", "psnr", bin_label="30-40")
    with pytest.raises(UserError, match="--metrics"):
        _cli("images", pairs, gt_dir, pred_dir, out, "--metrics", "psnr,fid")
    assert not out.exists()


def _jobs_in_a_fresh_process(tmp_path, pairs, gt_dir, pred_dir, env_home):
    """Per-image (with LPIPS), reference and set jobs of one bin in a fresh interpreter: their exit statuses and
    whether torch got loaded."""
    import subprocess
    import sys

    common = ["--pairs", str(pairs), "--gt-dir", str(gt_dir), "--bin", "10-20"]
    ref = tmp_path / "ref.npz"
    argvs = [["metrics", "images", *common, "--pred-dir", str(pred_dir), "--method", "toy", "--metrics",
              "psnr,lpips", "--out", str(tmp_path / "img.csv")],
             ["metrics", "reference", *common, "--out", str(ref)],
             ["metrics", "sets", *common, "--pred-dir", str(pred_dir), "--method", "toy", "--reference", str(ref),
              "--out", str(tmp_path / "set.csv")]]
    code = (f"import sys; from strdiffusion.cli import main; rcs = [main(a) for a in {argvs!r}]; "
            "print(*rcs, 'torch' in sys.modules)")
    env = {**os.environ, "TORCH_HOME": str(env_home)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    return out.stdout.split(), out.stderr


def test_metric_jobs_without_weights_leave_torch_unloaded(tmp_path, weights_dir):
    """Offline (no LPIPS or Inception weights) a metric job computes PSNR/SSIM/L1 and marks the rest n/a without
    paying torch's start-up (about 2.5 CPU-seconds per job); with the weights it loads torch and computes them."""
    pairs, gt_dir, pred_dir, _, _ = write_set(tmp_path / "data", n=4)
    empty = tmp_path / "empty_home"
    empty.mkdir()
    words, err = _jobs_in_a_fresh_process(tmp_path / "a", pairs, gt_dir, pred_dir, empty)
    assert words == ["0", "0", "0", "False"], err[-2000:]
    assert np.isnan(pd.read_csv(tmp_path / "a" / "img.csv")["lpips"]).all()
    home = tmp_path / "standin_home"
    (home / "hub").mkdir(parents=True)
    (home / "hub" / "checkpoints").symlink_to(weights_dir)
    words, err = _jobs_in_a_fresh_process(tmp_path / "b", pairs, gt_dir, pred_dir, home)
    assert words == ["0", "0", "0", "True"], err[-2000:]
    assert np.isfinite(pd.read_csv(tmp_path / "b" / "img.csv")["lpips"]).all()
    assert np.isfinite(pd.read_csv(tmp_path / "b" / "set.csv")["fid"]).all()


@pytest.mark.parametrize("env", [{"TORCH_HOME": "~/th"}, {"XDG_CACHE_HOME": "/x/cache"}, {}])
def test_weights_folder_follows_torch_hubs_rule_without_torch(env, tmp_path):
    import subprocess
    import sys

    code = ("import sys; from strdiffusion.metrics.weights import default_dir; mine = default_dir(); "
            "assert 'torch' not in sys.modules; import torch; "
            "print(mine == __import__('pathlib').Path(torch.hub.get_dir()) / 'checkpoints', mine)")
    base = {k: v for k, v in os.environ.items() if k not in ("TORCH_HOME", "XDG_CACHE_HOME")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**base, "HOME": str(tmp_path), **env})
    assert out.stdout.split()[0] == "True", out.stdout + out.stderr[-2000:]
