"""A set-metric job's memory does not grow with the number of images beyond their features.

The job runs in a subprocess (its peak RSS is its own) on hard links to a few distinct 128 px PNGs,
with a small random-weight convolutional network standing in for the FID Inception: reading and
holding the images is what is measured, and that does not depend on the network.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

# the stage's own CLI with a cheap feature network in place of the Inception (2,048 features per image)
_JOB = textwrap.dedent("""
    import sys
    import numpy as np, torch
    from strdiffusion.metrics import evaluate as M
    from strdiffusion.stages import metrics as metrics_stage

    class SmallFeatures:
        available, reason, dims, weights_path = True, "", 2048, None

        def __init__(self, device="cpu", weights=None, batch_size=16):
            torch.manual_seed(0)
            self.batch_size = batch_size
            self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 8, stride=8), torch.nn.AdaptiveAvgPool2d(8)).eval()

        def __call__(self, images):
            x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
            with torch.inference_mode():
                return self.net(x).reshape(len(images), -1).double().numpy()

    M.InceptionFeatures = SmallFeatures  # where the stage's work (metrics.run_sets) looks it up
    metrics_stage.main(sys.argv[1:])
    # VmHWM, not getrusage's ru_maxrss: that one keeps the forking parent's peak across exec
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print("peak_rss_kb", int(hwm.split()[1]))
""")


def _linked_set(root: Path, n: int, distinct: int = 6, px: int = 128):
    """gt/ and pred/ with n PNGs each, hard links to ``distinct`` different images, and a pairs CSV."""
    rng = np.random.default_rng(0)
    src = root / "src"
    src.mkdir(parents=True)
    for k in range(distinct):
        base = rng.integers(0, 256, (px // 8, px // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
        Image.fromarray(base).save(src / f"gt{k}.png")
        noisy = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(src / f"pred{k}.png")
    for side in ("gt", "pred"):
        (root / side).mkdir()
        for i in range(n):
            os.link(src / f"{side}{i % distinct}.png", root / side / f"img{i:05d}.png")
    pairs = root / "pairs.csv"
    pd.DataFrame({"image_id": [f"img{i:05d}" for i in range(n)], "bin": "10-20", "mask": "m.png"}).to_csv(pairs, index=False)
    return pairs


def _peak_rss_mb(tmp_path: Path, n: int) -> tuple[float, pd.Series]:
    root = tmp_path / f"n{n}"
    pairs = _linked_set(root, n)
    out = root / "set.csv"
    res = subprocess.run([sys.executable, "-c", _JOB, "sets", "--pairs", str(pairs), "--gt-dir", str(root / "gt"),
                          "--pred-dir", str(root / "pred"), "--method", "toy", "--bin", "10-20", "--out", str(out),
                          "--device", "cpu", "--fid-method", "exact", "--kid-subsets", "2"],
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    peak_kb = int(res.stdout.split("peak_rss_kb")[-1])
    return peak_kb / 1024, pd.read_csv(out).iloc[0]


@pytest.mark.slow
def test_set_metrics_peak_memory_grows_less_than_a_quarter_from_500_to_4000_pairs(tmp_path):
    small, row_small = _peak_rss_mb(tmp_path, 500)
    large, row_large = _peak_rss_mb(tmp_path, 4000)
    assert row_small["n_images"] == 500 and row_large["n_images"] == 4000
    assert np.isfinite(row_large["fid"]) and row_large["fid"] > 0  # the features were computed and used
    # holding the images would add 2 x 48 KB per pair (0.4 GB at 4,000; a run that held them went from 877 to
    # 1,505 MB); the features are 32 KB per pair
    print(f"peak RSS: {small:.0f} MB at 500 pairs, {large:.0f} MB at 4,000 pairs")
    assert large < 1.25 * small, (small, large)


def test_pair_paths_and_chunks_match_reading_everything_at_once(tmp_path):
    from strdiffusion.io.errors import UserError
    from strdiffusion.metrics import evaluate as M

    rng = np.random.default_rng(1)
    gt, shard0, shard1 = (tmp_path / d for d in ("gt", "shard_0", "shard_1"))
    for d in (gt, shard0, shard1):
        d.mkdir()
    ids = [f"im{i}" for i in range(5)]
    for i, image_id in enumerate(ids):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(gt / f"{image_id}.png")
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save((shard0 if i < 3 else shard1) /
                                                                                f"{image_id}.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(shard1 / "im0.png")  # also in a later shard: the first wins
    paths = M.pair_paths(ids, gt, [shard0, shard1])
    assert [p.parent.name for _, p in paths] == ["shard_0"] * 3 + ["shard_1"] * 2
    whole_gt, whole_pred = M.load_image_pairs(ids, gt, [shard0, shard1])
    chunks = list(M.iter_image_pairs(paths, 2))
    assert [len(g) for g, _ in chunks] == [2, 2, 1]
    for a, b in zip([x for g, _ in chunks for x in g] + [x for _, p in chunks for x in p], whole_gt + whole_pred):
        np.testing.assert_array_equal(a, b)

    class Mean:  # per-image features: batches must not change them
        batch_size = 2

        def __call__(self, images):
            return np.stack([im.reshape(-1, 3).mean(0) for im in images])

    f_gt, f_pred = M.set_features(Mean(), paths)
    np.testing.assert_allclose(f_gt, Mean()(whole_gt), rtol=1e-6)
    np.testing.assert_allclose(f_pred, Mean()(whole_pred), rtol=1e-6)
    np.testing.assert_allclose(M.set_features(Mean(), paths, "pred"), f_pred)
    (shard1 / "im4.png").unlink()
    with pytest.raises(UserError, match=r"shard_0/im4\.png: prediction not found"):
        M.pair_paths(ids, gt, [shard0, shard1])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(shard1 / "im4.png")
    with pytest.raises(UserError, match=r"im4\.png is 8x8 but .*gt/im4\.png is 16x16"):
        list(M.iter_image_pairs(M.pair_paths(ids, gt, [shard0, shard1]), 2, "pred"))
