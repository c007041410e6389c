"""Tests for strdiffusion/metrics/reference.py: the ground truths' Inception statistics of a bin, computed
once (``metrics reference``), read by every method's set job, recomputed when images or weights change.

The Inception weights are random-weight stand-ins with the real file name (as in test_metrics.py).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from support.images import noisy, photo, write_set

from strdiffusion.metrics import evaluate as M
from strdiffusion.metrics import nets as MN
from strdiffusion.metrics import reference as R
from strdiffusion.stages import metrics as metrics_stage


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    MN.write_standin_weights(d)
    return d / MN.INCEPTION_FILE


@pytest.fixture
def home(inception_file, tmp_path, monkeypatch):
    ck = tmp_path / "torch_home" / "hub" / "checkpoints"
    ck.mkdir(parents=True)
    shutil.copy(inception_file, ck / MN.INCEPTION_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return ck


def _reference(pairs, gt_dir, out):
    return metrics_stage.main(["reference", "--pairs", str(pairs), "--gt-dir", str(gt_dir), "--bin", "10-20", "--out", str(out),
                   "--device", "cpu", "--batch-size", "3"])


def _sets(pairs, gt_dir, pred_dir, out, *extra):
    assert metrics_stage.main(["sets", "--pairs", str(pairs), "--gt-dir", str(gt_dir), "--pred-dir", str(pred_dir), "--method", "toy",
                   "--bin", "10-20", "--out", str(out), "--device", "cpu", "--batch-size", "3", "--fid-method", "exact",
                   "--kid-subsets", "3", "--kid-subset-size", "3", *extra]) == 0
    return pd.read_csv(out).iloc[0]


def _count_feature_sides(monkeypatch):
    """Record which side (gt, pred, both) every set_features call of the stage computes."""
    calls = []
    real = M.set_features

    def counting(features, paths, which="both", chunk=0):
        calls.append(which)
        return real(features, paths, which, chunk)

    monkeypatch.setattr(M, "set_features", counting)
    return calls


def test_reference_stats_give_the_same_fid_and_kid_and_spare_the_ground_truths(tmp_path, home, monkeypatch):
    pairs, gt_dir, pred_dir, gts, _ = write_set(tmp_path / "data", n=4, size=32)
    ref = tmp_path / "ref" / "10-20.npz"
    assert _reference(pairs, gt_dir, ref) == 0
    stats = R.read(ref)
    assert stats["n_images"] == 4 and stats["features"].shape == (4, 2048)
    assert stats["weights_sha256"] == R.weights_sha256(home / MN.INCEPTION_FILE)
    # pytorch-fid's keys: mean and sample covariance of the stored features
    f = stats["features"].astype(np.float64)
    np.testing.assert_allclose(stats["mu"], f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["sigma"], np.cov(f, rowvar=False), rtol=1e-9, atol=1e-12)
    # the stored features are those of a direct computation (float32, the network's output, kept exactly)
    assert stats["features"].dtype == np.float32
    np.testing.assert_allclose(stats["features"], MN.InceptionFeatures("cpu", batch_size=3)(gts), rtol=1e-5, atol=1e-5)

    calls = _count_feature_sides(monkeypatch)
    direct = _sets(pairs, gt_dir, pred_dir, tmp_path / "direct.csv")
    reused = _sets(pairs, gt_dir, pred_dir, tmp_path / "reused.csv", "--reference", str(ref))
    assert calls == ["both", "pred"]  # with the reference, only the predictions' features are computed
    assert direct["fid"] > 0 and direct["kid_std"] > 0
    assert reused["n_images"] == direct["n_images"] and reused["fid_backend"] == direct["fid_backend"]
    # equal up to the network's own run-to-run rounding (CPU convolutions), and to the printed digits
    for key, digits in (("fid", 2), ("kid_mean", 4), ("kid_std", 4)):
        assert reused[key] == pytest.approx(direct[key], rel=1e-6), key
        assert f"{reused[key]:.{digits}f}" == f"{direct[key]:.{digits}f}", key


def test_reference_stats_recomputed_when_the_images_change(tmp_path, home, monkeypatch):
    pairs, gt_dir, pred_dir, gts, _ = write_set(tmp_path / "data", n=4, size=32)
    ref = tmp_path / "10-20.npz"
    assert _reference(pairs, gt_dir, ref) == 0
    before = R.read(ref)
    stamp = os.stat(ref).st_mtime_ns
    assert _reference(pairs, gt_dir, ref) == 0 and os.stat(ref).st_mtime_ns == stamp  # fresh: kept as is

    Image.fromarray(noisy(photo(32, 7), 40, 3)).save(gt_dir / "img002.png")  # a changed test image
    ids = M.load_pair_ids(pairs, "10-20")
    assert "images" in R.stale_reason(before, gt_dir, ids, home / MN.INCEPTION_FILE)
    calls = _count_feature_sides(monkeypatch)
    stale = _sets(pairs, gt_dir, pred_dir, tmp_path / "stale.csv", "--reference", str(ref))
    assert calls == ["both"]  # the stale file was not used
    direct = _sets(pairs, gt_dir, pred_dir, tmp_path / "direct.csv")
    assert stale["fid"] == pytest.approx(direct["fid"], rel=1e-6)

    assert _reference(pairs, gt_dir, ref) == 0
    after = R.read(ref)
    assert after["image_list_sha256"] != before["image_list_sha256"]
    assert not np.array_equal(after["features"][2], before["features"][2])
    np.testing.assert_allclose(after["features"][[0, 1, 3]], before["features"][[0, 1, 3]], rtol=1e-5, atol=1e-5)
    assert R.stale_reason(after, gt_dir, ids, home / MN.INCEPTION_FILE) == ""
    # a different list of ids (another bin's, or a reordered test set) is stale too
    assert "images" in R.stale_reason(after, gt_dir, ids[::-1], home / MN.INCEPTION_FILE)


def test_reference_stats_recomputed_when_the_weights_change(tmp_path, home):
    pairs, gt_dir, pred_dir, _, _ = write_set(tmp_path / "data", n=3, size=32)
    ref = tmp_path / "10-20.npz"
    assert _reference(pairs, gt_dir, ref) == 0
    before = R.read(ref)
    state = torch.load(home / MN.INCEPTION_FILE)
    state["fc.bias"] = state["fc.bias"] + 1  # other weights: another file, another hash
    torch.save(state, home / MN.INCEPTION_FILE)
    ids = M.load_pair_ids(pairs, "10-20")
    assert "weights changed" in R.stale_reason(before, gt_dir, ids, home / MN.INCEPTION_FILE)
    assert R.load_fresh(ref, gt_dir, ids, home / MN.INCEPTION_FILE) is None
    assert _reference(pairs, gt_dir, ref) == 0
    after = R.read(ref)
    assert after["weights_sha256"] != before["weights_sha256"]
    assert after["weights_sha256"] == R.weights_sha256(home / MN.INCEPTION_FILE)


def test_reference_stats_without_weights_say_why_and_set_jobs_report_na(tmp_path, empty_torch_home):
    pairs, gt_dir, pred_dir, _, _ = write_set(tmp_path / "data", n=3, size=32)
    ref = tmp_path / "10-20.npz"
    assert _reference(pairs, gt_dir, ref) == 0
    stats = R.read(ref)
    assert "features" not in stats and MN.INCEPTION_FILE in stats["reason"]
    row = _sets(pairs, gt_dir, pred_dir, tmp_path / "set.csv", "--reference", str(ref))
    assert np.isnan(row["fid"]) and row["n_images"] == 3
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(Exception, match="bad.npz: not a reference statistics file"):
        R.read(tmp_path / "bad.npz")


@pytest.mark.slow
def test_reference_stats_one_job_per_dataset_and_bin_read_by_every_method(tmp_path, repo_root):
    """In the workflow's DAG: one reference_stats job per bin, an input of each method's set job."""
    import sys

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(repo_root / "Snakefile", work / "Snakefile")
    for folder in ("workflow", "config", "checkpoints"):
        shutil.copytree(repo_root / folder, work / folder)
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    res = subprocess.run([snakemake, "-n", "--cores", "1"], cwd=work, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout + res.stderr
    stats = out[out.index("Job stats:"):].splitlines()
    counts = {line.split()[0]: int(line.split()[1]) for line in stats[3:] if len(line.split()) == 2
              and line.split()[1].isdigit()}
    import yaml

    cfg = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    bins = sum(len(ds["masks"]["bins"]) for name, ds in cfg["datasets"].items()
               if name in (cfg.get("run_datasets") or cfg["datasets"]))
    assert counts["reference_stats"] == bins
    assert counts["set_metrics"] == bins * len(cfg["methods"])
    for block in out.split("\nrule set_metrics:")[1:]:
        inputs = next(line for line in block.splitlines() if "input:" in line)
        assert "/metrics/reference/" in inputs and ".npz" in inputs
