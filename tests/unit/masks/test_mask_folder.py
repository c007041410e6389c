"""Tests for strdiffusion/masks/folder.py: the generic `folder` mask protocol (and NVIDIA as its preset).

The folders are built here with known hole ratios: mask k of a 40x40 set has a hole of exactly
``HOLES[k]`` rows x 40 columns, so its hole ratio is ``HOLES[k] / 40`` at 40 px and at 20 px (NEAREST
halving keeps whole even-aligned rows).
"""
from __future__ import annotations

import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from strdiffusion.io.errors import UserError
from strdiffusion.io.images import read_mask
from strdiffusion.masks import build as M
from strdiffusion.masks import folder as F
from strdiffusion.stages import masks as masks_stage

SIDE = 40
HOLES = [6, 10, 14, 2, 18, 12, 8, 16, 4]   # rows of hole: ratios .15 .25 .35 .05 .45 .30 .20 .40 .10


def _hole(rows: int, side: int = SIDE, width: int | None = None) -> np.ndarray:
    h = np.zeros((side, width or side), np.uint8)
    h[side - rows:, :] = 1   # the bottom rows; even counts stay exact under 2x NEAREST downscaling
    return h


def make_folder(root: Path, polarity: str, holes=HOLES, side: int = SIDE, width: int | None = None,
                ext: str = "png") -> Path:
    """One file per entry of ``holes``, named k.png in order; white = hole or white = known."""
    root.mkdir(parents=True, exist_ok=True)
    for k, rows in enumerate(holes):
        hole = _hole(rows, side, width)
        white = hole if polarity == "hole_white" else 1 - hole
        Image.fromarray(white * np.uint8(255)).save(root / f"{k:03d}.{ext}")
    return root


def _ratios(mask_bin) -> list[float]:
    return [M.hole_ratio(m) for m in mask_bin.masks]


def test_mask_folder_both_polarities_give_the_same_holes(tmp_path):
    hole_white = make_folder(tmp_path / "hw", "hole_white")
    known_white = make_folder(tmp_path / "kw", "known_white")
    bins = [(0.0, 1.0)]
    (a,) = F.import_folder(hole_white, SIDE, bins, len(HOLES), 0, polarity="hole_white", binning="none")
    (b,) = F.import_folder(known_white, SIDE, bins, len(HOLES), 0, polarity="known_white", binning="none")
    assert a.sources == b.sources and all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
    expected = {f"{k:03d}.png": rows / SIDE for k, rows in enumerate(HOLES)}
    assert {s: r for s, r in zip(b.sources, _ratios(b))} == pytest.approx(expected, abs=1e-12)
    # the wrong polarity reads every 25 % hole as 75 %: the complement
    (wrong,) = F.import_folder(known_white, SIDE, bins, len(HOLES), 0, polarity="hole_white", binning="none")
    assert {s: 1 - r for s, r in zip(wrong.sources, _ratios(wrong))} == pytest.approx(expected, abs=1e-12)


def test_mask_folder_ratio_binning_puts_each_file_in_its_bin(tmp_path):
    folder = make_folder(tmp_path / "kw", "known_white")
    bins = [(0.1, 0.2), (0.2, 0.3), (0.4, 0.5)]
    out = F.import_folder(folder, SIDE, bins, 5, 0, polarity="known_white", binning="ratio")
    want = {(lo, hi): sorted(f"{k:03d}.png" for k, r in enumerate(HOLES) if lo < r / SIDE <= hi) for lo, hi in bins}
    for b in out:
        assert sorted(b.sources) == want[(b.lo, b.hi)]   # (0.1, 0.2]: 0.15 and 0.2, not 0.1
        assert all(b.lo < r <= b.hi for r in _ratios(b))
    assert [b.label for b in out] == ["10-20", "20-30", "40-50"]
    with pytest.raises(UserError, match="no mask for bin 60-70"):
        F.import_folder(folder, SIDE, [(0.6, 0.7)], 2, 0, polarity="known_white", binning="ratio")


def test_mask_folder_index_binning_by_sorted_position(tmp_path):
    folder = make_folder(tmp_path / "hw", "hole_white")
    bins = [(0.1, 0.2), (0.2, 0.3), (0.3, 0.4)]
    out = F.import_folder(folder, SIDE, bins, 2, 0, polarity="hole_white", binning="index", files_per_bin=3)
    for g, b in enumerate(out):
        assert len(b.sources) == 2
        assert {int(s[:3]) // 3 for s in b.sources} == {g}   # file k belongs to bin k // files_per_bin
        assert b.fill == "imported-index"
    # seeded: the same seed chooses the same files, another seed may not
    again = F.import_folder(folder, SIDE, bins, 2, 0, polarity="hole_white", binning="index", files_per_bin=3)
    assert [b.sources for b in again] == [b.sources for b in out]
    with pytest.raises(UserError, match="single bin"):
        F.import_folder(folder, SIDE, bins, 2, 0, binning="none")


def test_mask_folder_resize_nearest_and_aspect_ratio(tmp_path):
    folder = make_folder(tmp_path / "big", "known_white")
    (b,) = F.import_folder(folder, SIDE // 2, [(0.0, 1.0)], len(HOLES), 0, polarity="known_white", binning="none")
    assert all(m.shape == (SIDE // 2, SIDE // 2) and set(np.unique(m)) <= {0, 1} for m in b.masks)
    ratios = dict(zip(b.sources, _ratios(b)))
    assert ratios == pytest.approx({f"{k:03d}.png": r / SIDE for k, r in enumerate(HOLES)}, abs=1e-12)
    # a 40x60 mask: an error naming the file and the fix, unless a centre crop is asked for
    wide = make_folder(tmp_path / "wide", "hole_white", holes=[10], width=60)
    with pytest.raises(UserError, match=r"000.png: mask is 60x40, not square.*center_crop"):
        F.import_folder(wide, SIDE, [(0.0, 1.0)], 1, 0, binning="none")
    (c,) = F.import_folder(wide, SIDE, [(0.0, 1.0)], 1, 0, binning="none", resize="center_crop")
    assert c.masks[0].shape == (SIDE, SIDE) and M.hole_ratio(c.masks[0]) == pytest.approx(10 / SIDE)


def test_mask_folder_grey_threshold_and_zip_and_jpeg(tmp_path):
    root = tmp_path / "grey"
    root.mkdir()
    gray = np.full((SIDE, SIDE), 30, np.uint8)
    gray[:10] = 100          # 25 % at grey 100, 25 % at 200
    gray[10:20] = 200
    Image.fromarray(gray).save(root / "a.png")
    hole_at = {t: M.hole_ratio(F.import_folder(root, SIDE, [(0.0, 1.0)], 1, 0, binning="none", threshold=t)[0].masks[0])
               for t in (128, 90, 20)}
    assert hole_at == {128: 0.25, 90: 0.5, 20: 1.0}
    folder = make_folder(tmp_path / "kw", "known_white")
    archive = tmp_path / "kw.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(folder.iterdir()):
            z.write(p, f"masks/{p.name}")
    from_zip = F.import_folder(archive, SIDE, [(0.2, 0.3)], 9, 0, polarity="known_white")
    from_dir = F.import_folder(folder, SIDE, [(0.2, 0.3)], 9, 0, polarity="known_white")
    assert [s.split("/")[-1] for s in from_zip[0].sources] == from_dir[0].sources
    jpeg = make_folder(tmp_path / "jpg", "known_white", holes=[10], ext="jpg")   # lossy: the threshold absorbs it
    (j,) = F.import_folder(jpeg, SIDE, [(0.0, 1.0)], 1, 0, polarity="known_white", binning="none")
    assert M.hole_ratio(j.masks[0]) == pytest.approx(0.25, abs=0.01)


def test_mask_folder_cli_stats_pairs_and_n_test_warning(tmp_path, caplog):
    folder = make_folder(tmp_path / "kw", "known_white")
    out = tmp_path / "masks"
    with caplog.at_level(logging.WARNING, logger="strdiffusion.masks.build"):
        assert masks_stage.main(["generate", "--protocol", "folder", "--source", str(folder), "--polarity", "known_white",
                       "--binning", "ratio", "--size", str(SIDE), "--bins", "0.1:0.2,0.2:0.3", "--count", "5",
                       "--n-test", "4", "--seed", "0", "--out", str(out)]) == 0
    warnings = [r.getMessage() for r in caplog.records if "n_test" in r.getMessage()]
    assert len(warnings) == 2 and all("images will share masks" in w for w in warnings)   # 2 masks per bin < 4
    stats = pd.read_csv(out / "stats.csv")
    assert list(stats["bin"]) == ["10-20", "20-30"] and list(stats["count"]) == [2, 2]
    assert stats.loc[0, "hole_min"] == pytest.approx(0.15) and stats.loc[0, "hole_max"] == pytest.approx(0.2)
    assert stats.filter(like="hist_").sum(axis=1).tolist() == [2, 2]
    # written files are white = hole, whatever the source's polarity
    for f in sorted(out.glob("*/*.png")):
        assert M.hole_ratio(np.asarray(Image.open(f)) > 127) == pytest.approx(1 - read_mask(f).mean())
    pairs = M.make_pairs([f"img{i}" for i in range(4)], None, out, 4, seed=0)
    for row in pairs.itertuples():
        lo, hi = (int(v) / 100 for v in row.bin.split("-"))
        assert lo < row.hole_ratio <= hi
        assert row.hole_ratio == pytest.approx(1 - read_mask(row.mask).mean())


def test_mask_folder_training_pool_and_nvidia_preset(tmp_path):
    folder = make_folder(tmp_path / "kw", "known_white")
    pool = M.generate_pool("folder", SIDE, 12, 0, folder=dict(source=folder, polarity="known_white"))
    assert len(pool) == 12 and sorted({M.hole_ratio(h) for h in pool}) == sorted(r / SIDE for r in HOLES)
    # NVIDIA is the preset hole_white + index binning in NVIDIA's bins: the same as the generic call
    nv = make_folder(tmp_path / "nv", "hole_white", holes=HOLES[:6])
    preset = M.generate_binned("nvidia", SIDE, [(0.1, 0.2), (0.2, 0.3)], 1, 0, nvidia_source=nv, nvidia_per_bin=2)
    generic = F.import_folder(nv, SIDE, [(0.1, 0.2), (0.2, 0.3)], 1, 0, polarity="hole_white", binning="index",
                              files_per_bin=2, protocol="nvidia", group_of=M._nvidia_group, extensions=(".png",))
    assert [b.sources for b in preset] == [b.sources for b in generic]
    assert [int(b.sources[0][:3]) // 2 for b in preset] == [1, 2]   # NVIDIA bin 10-20 % is group 1


def test_mask_folder_config_needs_a_source(tmp_path):
    from strdiffusion.settings.config import load

    cfg = yaml.safe_load(Path("config/config.yaml").read_text())
    cfg["datasets"]["builtin"]["masks"].update(protocol="folder")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="masks.source"):
        load(tmp_path / "c.yaml")
    cfg["datasets"]["builtin"]["masks"].update(source="x", polarity="white")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="polarity"):
        load(tmp_path / "c.yaml")


@pytest.mark.slow
def test_mask_folder_end_to_end_known_white_pairs(tmp_path, request):
    """Builtin data + protocol folder (known_white, ratio binning) -> pairs.csv whose
    hole ratios lie in their bins and equal the true ratios of the source files."""
    repo = Path(request.config.rootpath)
    size = 64
    holes = [r * 2 for r in range(3, 31)]               # 6..60 rows of 64: ratios 0.094 .. 0.94
    folder = make_folder(tmp_path / "kw", "known_white", holes=holes, side=size)
    truth = {f"{k:03d}.png": rows / size for k, rows in enumerate(holes)}
    work = tmp_path / "work"
    work.mkdir()
    cfg = {"datasets": {"builtin": {"source": "builtin", "n_test": 4, "masks": {
        "protocol": "folder", "source": str(folder), "polarity": "known_white", "binning": "ratio",
        "bins": [[0.1, 0.2], [0.2, 0.3], [0.3, 0.4], [0.4, 0.5]], "per_bin": 3}}}}
    (work / "extra.yaml").write_text(yaml.safe_dump(cfg))
    import shutil

    shutil.copytree(repo / "config", work / "config")
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    res = subprocess.run([snakemake, "-s", str(repo / "Snakefile"), "--cores", "2", "results/builtin/masks/pairs.csv",
                          "--configfile", "extra.yaml"], cwd=work, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    pairs = pd.read_csv(work / "results/builtin/masks/pairs.csv")
    listing = pd.read_csv(work / "results/builtin/masks/test/masks.csv")
    source_of = {f"results/builtin/masks/test/{r.file}": r.source for r in listing.itertuples()}
    assert len(pairs) == 16 and sorted(pairs["bin"].unique()) == ["10-20", "20-30", "30-40", "40-50"]
    for row in pairs.itertuples():
        lo, hi = (int(v) / 100 for v in row.bin.split("-"))
        assert lo < row.hole_ratio <= hi
        assert row.hole_ratio == pytest.approx(truth[source_of[row.mask]], abs=1e-12)
