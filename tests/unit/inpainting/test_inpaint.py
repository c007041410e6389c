import numpy as np
import pandas as pd
import pytest

from strdiffusion.inpainting.run import CLASSICAL, classical_inpaint, shard_rows
from strdiffusion.io.errors import UserError


def _scene():
    y, x = np.mgrid[0:48, 0:48]
    img = np.dstack([x * 5, y * 5, (x + y) * 2]).astype(np.uint8)  # smooth gradients: easy to inpaint
    mask = np.ones((48, 48), np.float32)
    mask[16:32, 12:36] = 0
    return img, mask


@pytest.mark.parametrize("method", CLASSICAL)
def test_classical_keeps_known_pixels_and_fills_holes(method):
    img, mask = _scene()
    out = classical_inpaint(method, img, mask)
    known = mask > 0.5
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(out[known], img[known])
    err = np.abs(out[~known].astype(float) - img[~known].astype(float)).mean()
    blank = np.abs(img[~known].astype(float)).mean()
    assert err < 0.25 * blank  # the hole is filled with something close to the smooth gradient


@pytest.mark.parametrize("method", CLASSICAL)
def test_classical_never_sees_the_ground_truth_in_the_hole(method):
    img, mask = _scene()
    other = img.copy()
    other[mask == 0] = 255 - other[mask == 0]
    assert np.array_equal(classical_inpaint(method, img, mask), classical_inpaint(method, other, mask))


def test_shards_partition_the_pairs_of_a_bin():
    pairs = pd.DataFrame({"image_id": [f"i{k}" for k in range(10)] * 2, "bin": ["10-20"] * 10 + ["20-30"] * 10,
                          "mask": ["m"] * 20})
    got = pd.concat([shard_rows(pairs, "20-30", k, 4) for k in range(3)])
    assert list(got.image_id) == [f"i{k}" for k in range(10)]
    with pytest.raises(UserError, match="shard 3 is empty"):
        shard_rows(pairs, "20-30", 3, 4)
    with pytest.raises(UserError, match="no pairs"):
        shard_rows(pairs, "30-40", 0, 4)


def test_mean_fill_is_the_mean_colour_of_known_pixels():
    from strdiffusion.inpainting.run import classical_inpaint

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 10, 3)).astype(np.uint8)
    mask = np.ones((12, 10), np.float32)
    mask[3:7, 2:6] = 0
    out = classical_inpaint("mean_fill", image, mask)
    known = mask > 0.5
    assert np.array_equal(out[known], image[known])
    want = np.round(image[known].astype(np.float64).mean(0)).astype(np.uint8)
    assert (out[~known] == want).all()
    assert not np.array_equal(out[~known], image[~known])


def test_classical_job_leaves_torch_unloaded(tmp_path):
    """A classical method's job (a quarter to a half of a paper run's inpainting jobs) starts without torch: a
    fraction of a second instead of two."""
    import subprocess
    import sys

    from PIL import Image

    img, mask = _scene()
    Image.fromarray(img).save(tmp_path / "img.png")
    Image.fromarray(((1 - mask) * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    code = ("import sys; from strdiffusion.cli import main; "
            f"rc = main(['inpaint', '--method', 'telea', '--image', {str(tmp_path / 'img.png')!r}, "
            f"'--mask', {str(tmp_path / 'mask.png')!r}, '--out', {str(tmp_path / 'out.png')!r}]); "
            "print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["0", "False"], out.stdout + out.stderr[-2000:]
    assert (tmp_path / "out.png").is_file()
