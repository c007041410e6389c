"""Own photos at any size (strdiffusion/inpainting/window.py): the networks fill a window around each hole at
their trained size, and every known pixel of the photo comes back byte for byte."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from strdiffusion.inpainting.window import (AUTHORS_SIZE, OWN_DEFAULT_SIZE, Box, WindowSettings, hole_regions,
                                            trained_size, use_windows, window_input, windows)
from strdiffusion.io.errors import UserError

REPO = Path(__file__).resolve().parents[3]


def _cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "strdiffusion", "inpaint", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=600, env=env)


def _photo(height: int, width: int) -> np.ndarray:
    import skimage.data

    return cv2.resize(skimage.data.coffee(), (width, height), interpolation=cv2.INTER_CUBIC)


def test_own_image_window_of_a_1600x1200_photo_keeps_every_known_pixel_and_fills_only_the_hole(tmp_path):
    """The README's command with the shipped networks on a 1,600 x 1,200 photo with a 200 x 150 hole, painted
    magenta where the object to remove would be."""
    photo = _photo(1200, 1600)
    hole = np.zeros((1200, 1600), bool)
    hole[850:1000, 1000:1200] = True
    photo[hole] = (255, 0, 255)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(hole.astype(np.uint8) * 255).save(tmp_path / "hole.png")
    out = tmp_path / "filled.png"
    res = _cli("--method", "strdiffusion", "--checkpoints", REPO / "checkpoints" / "laptop",
               "--image", tmp_path / "photo.png", "--mask", tmp_path / "hole.png", "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "trained size: 64 px (recorded in" in res.stderr
    assert "1 hole region(s) in 1 window(s) at 64 px: 400x400 at (900, 725)" in res.stderr  # 200 + 2 x 0.5 x 200
    assert "windows: 100%" in res.stderr  # the progress bar
    result = np.asarray(Image.open(out))
    assert result.shape == photo.shape and result.dtype == np.uint8
    assert np.array_equal(result[~hole], photo[~hole])  # byte-identical outside the hole
    changed = (result != photo).any(-1)
    assert changed[hole].mean() > 0.99  # the magenta is gone ...
    ring = np.zeros_like(hole)
    ring[800:1050, 950:1250] = True
    ring &= ~hole
    # ... for the colours around it (the coffee cup's red and the table's brown), not a dark or magenta smudge
    assert np.abs(result[hole].mean(0) - photo[ring].mean(0)).max() < 40, (result[hole].mean(0), photo[ring].mean(0))


@pytest.fixture(scope="module")
def random_nets(tmp_path_factory):
    """Tiny random networks; their files record no trained size (the fallback applies)."""
    from strdiffusion.models.checkpoints import build_network, save_checkpoint
    from strdiffusion.core.sde import IRSDE

    folder = tmp_path_factory.mktemp("nets")
    torch.manual_seed(0)
    for kind, kw in [("structure", {"nf": 4, "depth": 2}), ("texture", {"nf": 4, "depth": 2}), ("critic", {"ngf": 4})]:
        save_checkpoint(folder / f"{kind}.pt", build_network(kind, **kw), kind, kw, IRSDE(T=4))
    return folder


def test_own_image_window_and_full_image_fill_the_same_holes_of_a_photo_larger_than_the_trained_size(tmp_path,
                                                                                                     random_nets):
    photo = _photo(90, 130)
    hole = np.zeros((90, 130), bool)
    hole[10:20, 10:25] = True
    hole[60:75, 100:120] = True
    Image.fromarray(photo).save(tmp_path / "p.png")
    Image.fromarray(hole.astype(np.uint8) * 255).save(tmp_path / "m.png")
    fast = ("--T", 4, "--u-max", 2, "--u-min", 1, "--jump", 2, "--re", 1)
    outs = {}
    for mode in ("window", "full"):
        outs[mode] = tmp_path / f"{mode}.png"
        whole = ["--full-image"] if mode == "full" else ["--save-structure"]
        res = _cli("--method", "strdiffusion_noresample", "--checkpoints", random_nets, "--image", tmp_path / "p.png",
                   "--mask", tmp_path / "m.png", "--out", outs[mode], *fast, *whole)
        assert res.returncode == 0, res.stderr[-3000:]
        if mode == "window":
            assert f"trained size: {OWN_DEFAULT_SIZE} px (not recorded in" in res.stderr
            assert "2 hole region(s) in 2 window(s)" in res.stderr
            structure = sorted(p.name for p in (tmp_path / "structure").glob("*.png"))
            assert structure == ["window_window0.png", "window_window1.png"]  # each window's, at the trained size
            assert np.asarray(Image.open(tmp_path / "structure" / structure[0])).shape == (64, 64)
        else:
            assert "window(s)" not in res.stderr
    window, full = (np.asarray(Image.open(outs[m])) for m in ("window", "full"))
    for result in (window, full):
        assert np.array_equal(result[~hole], photo[~hole])
    assert not np.array_equal(window[hole], full[hole])  # two ways of filling


def test_window_geometry_contains_each_hole_merges_overlaps_and_stays_inside():
    hole = np.zeros((300, 400), bool)
    hole[10:30, 10:50] = True      # near the corner: its window is moved inside the image
    hole[40:45, 60:62] = True      # close to the first: the two windows merge
    hole[200:240, 300:320] = True  # far away: a window of its own
    got = windows(hole, margin=0.5, min_side=64)
    assert len(hole_regions(hole)) == 3 and len(got) == 2
    first, second = got
    assert first.y0 == 0 and first.x0 == 0 and first.height == first.width
    assert first.y1 >= 45 and first.x1 >= 62
    assert second == Box(180, 270, 260, 350)  # 40 + 2 x 20 = 80 px square, centred on the region
    assert not first.overlaps(second)
    covered = np.zeros_like(hole)
    for box in got:
        assert 0 <= box.y0 < box.y1 <= 300 and 0 <= box.x0 < box.x1 <= 400
        covered[box.slices] = True
    assert covered[hole].all()
    # a tiny hole gets a window of the trained size; one longer than the image a window cut to the image
    tiny = np.zeros((300, 400), bool)
    tiny[150, 200] = True
    assert windows(tiny, 0.5, 64) == [Box(118, 168, 182, 232)]
    wide = np.zeros((100, 400), bool)
    wide[40:60, 20:380] = True
    assert windows(wide, 0.5, 64) == [Box(0, 0, 100, 400)]


def test_window_input_marks_every_small_pixel_touching_the_hole_as_hole():
    image = np.full((400, 400, 3), 200, np.uint8)
    hole = np.zeros((400, 400), bool)
    hole[100:101, 100:300] = True  # one row: a sliver of every small pixel it crosses
    small, mask = window_input(image, hole, Box(0, 0, 400, 400), 64)
    assert small.shape == (64, 64, 3) and mask.shape == (64, 64)
    assert (mask == 0).sum() == 32 and mask[16, 16:48].min() == 0  # row 100 / 6.25 = 16, columns 16-47
    assert set(np.unique(mask)) == {0.0, 1.0}


def test_window_trained_size_comes_from_the_checkpoint_or_a_stated_fallback():
    assert trained_size({"texture": {"image_size": 128, "path": "t.pt"}})[0] == 128
    assert trained_size({"irsde": {"train_settings": {"size": 96}, "path": "i.pt"}})[0] == 96
    size, why = trained_size({"texture": {"format": "state_dict", "path": "texture.pth"}})
    assert size == AUTHORS_SIZE == 256 and "paper" in why
    size, why = trained_size({"texture": {"format": "strdiffusion-checkpoint", "path": "old.pt"}})
    assert size == OWN_DEFAULT_SIZE == 64 and "not recorded in old.pt" in why
    assert use_windows((65, 30), 64, WindowSettings()) and not use_windows((64, 64), 64, WindowSettings())
    assert not use_windows((4000, 3000), 64, WindowSettings(full_image=True))
    with pytest.raises(UserError, match="--window-margin"):
        WindowSettings(window_margin=-1)


def test_window_merging_of_photos_with_hundreds_or_thousands_of_holes_is_complete():
    rng = np.random.default_rng(0)
    for (height, width), n, expect in (((1200, 1600), 3000, "one"), ((3000, 4000), 300, "many")):
        hole = np.zeros((height, width), bool)
        hole[rng.integers(0, height, n), rng.integers(0, width, n)] = True  # dust: one-pixel holes
        got = windows(hole, 0.5, 64)
        covered = np.zeros_like(hole)
        for i, box in enumerate(got):
            covered[box.slices] = True
            assert not any(box.overlaps(other) for other in got[i + 1:])
        assert covered[hole].all()
        # 3,000 windows of 64 px cover the 1,600 x 1,200 photo: one window, the photo; 300 leave most apart
        assert (len(got) == 1 and got[0] == Box(0, 0, height, width)) if expect == "one" else 100 < len(got) < n
