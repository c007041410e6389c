"""Tests of strdiffusion/masks/build.py and generators.py: protocols, binning, NVIDIA import, pairing, CLI
(all names contain 'mask')."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from strdiffusion.core.seeds import seed_for
from strdiffusion.io.errors import UserError
from strdiffusion.masks import build as M
from strdiffusion.masks import generators as G
from strdiffusion.stages import masks as masks_stage

BINS = [(0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5)]
RANDOM_PROTOCOLS = ["lama_thin", "lama_medium", "lama_thick", "lama_thick_512", "deepfill", "box_random",
                    "box_center"]


def _read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _natural_ratios(protocol, size, n, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([M.hole_ratio(G.PROTOCOLS[protocol].natural(size, size, rng)) for _ in range(n)])


# ---------------------------------------------------------------------------------------------- protocols

@pytest.mark.parametrize("size", [64, 256])
def test_mask_repaint_fixed_ratios(size):
    expected = {"repaint_half": 0.5, "repaint_expand": 0.9375, "repaint_lines": 0.5, "repaint_sr2": 0.75}
    for protocol, ratio in expected.items():
        (b,) = M.generate_binned(protocol, size, [(0.1, 0.2)], 7, seed=0)
        assert len(b.masks) == 1 and b.label == protocol.split("_")[1]
        assert M.hole_ratio(b.masks[0]) == ratio
    hole = G.repaint_expand(size, size)
    k = size // 4
    top = (size - k) // 2
    assert not hole[top:top + k, top:top + k].any() and hole.sum() == size * size - k * k
    assert G.repaint_half(size, size)[:, : size // 2].sum() == 0          # left half known
    assert G.repaint_lines(size, size)[1::2].sum() == 0                   # odd rows known
    assert G.repaint_sr2(size, size)[1::2, 1::2].sum() == 0 and G.repaint_sr2(size, size)[0::2].all()


@pytest.mark.parametrize("size", [64, 256])
@pytest.mark.parametrize("protocol", RANDOM_PROTOCOLS)
def test_mask_binned_ratios_lie_in_bins(protocol, size):
    bins = M.generate_binned(protocol, size, BINS, 6, seed=3)
    assert [b.label for b in bins] == ["10-20", "20-30", "30-40", "40-50"]
    for b, (lo, hi) in zip(bins, BINS):
        assert len(b.masks) == 6
        for hole in b.masks:
            assert hole.shape == (size, size) and hole.dtype == np.uint8 and set(np.unique(hole)) <= {0, 1}
            assert lo < hole.mean() <= hi


def test_mask_lama_natural_ratios_match_published_means():
    # RePaint ships 100 LaMa masks per preset at 256 px: mean hole ratio thick 0.249, thin 0.297.
    thin = _natural_ratios("lama_thin", 256, 300)
    medium = _natural_ratios("lama_medium", 256, 300)
    thick = _natural_ratios("lama_thick", 256, 300)
    assert 0.26 < thin.mean() < 0.33
    assert 0.22 < thick.mean() < 0.29
    assert medium.mean() < thin.mean() and thick.mean() < thin.mean()
    for r in (thin, medium, thick):
        assert r.max() <= G.MAX_TAMPER_AREA and r.min() > 0          # max_tamper_area redraws


def test_mask_lama_and_deepfill_scale_with_size():
    # lengths/widths scale by size/256: the ratio distribution is about the same at 64 px
    # (unscaled, a thick stroke at 64 px is up to 104 px wide and nearly every mask would be > 0.5)
    for protocol in ("lama_thick", "lama_thin", "deepfill"):
        r64, r256 = _natural_ratios(protocol, 64, 300), _natural_ratios(protocol, 256, 300)
        assert abs(r64.mean() - r256.mean()) < 0.05, protocol
    df = _natural_ratios("deepfill", 256, 300)
    assert 0.08 < df.mean() < 0.25 and df.min() > 0 and df.max() < 0.6
    thick512 = _natural_ratios("lama_thick_512", 512, 100)
    assert 0.2 < thick512.mean() < 0.32


def test_mask_lama_stroke_width_scaled_at_64px():
    # a single thick stroke segment at 64 px is at most (5 + 99) * 64/256 = 26 px wide
    p = G.LAMA_PRESETS["lama_thick"]
    hole = np.zeros((64, 64), np.uint8)
    u = [0.5, 0.5, 0.0, 0.0, 0.0, 0.999999]               # one segment, angle 2pi-0.01 (downwards), length 10
    G._lama_stroke(hole, 0, u + [0.0] * (G._STROKE_DRAWS - len(u)), p, 64 / 256)
    cols = np.flatnonzero(hole.any(axis=0))
    assert 20 <= cols.size <= 28


def test_mask_box_center_is_centred_square():
    hole = G.box_center(64, 64, ratio=0.25)
    assert hole[16:48, 16:48].all() and hole.sum() == 32 * 32
    for hole in M.generate_binned("box_center", 64, [(0.2, 0.3)], 5, seed=1)[0].masks:
        rows, cols = np.flatnonzero(hole.any(1)), np.flatnonzero(hole.any(0))
        assert rows.size == cols.size and hole.sum() == rows.size ** 2
        assert abs((rows[0] + rows[-1]) / 2 - 31.5) <= 0.5


def test_mask_fill_modes_and_unreachable_bins():
    (b,) = M.generate_binned("deepfill", 64, [(0.4, 0.5)], 4, seed=0)
    assert b.fill == "adaptive" and all(0.4 < m.mean() <= 0.5 for m in b.masks)
    (b,) = M.generate_binned("lama_thin", 64, [(0.2, 0.3)], 4, seed=0)
    assert b.fill == "natural"
    (b,) = M.generate_binned("lama_thin", 64, [(0.2, 0.3)], 4, seed=0, fill="adaptive")
    assert b.fill == "adaptive" and all(0.2 < m.mean() <= 0.3 for m in b.masks)
    with pytest.raises(UserError, match="deepfill.*adaptive"):
        M.generate_binned("deepfill", 64, [(0.45, 0.5)], 2, seed=0, fill="natural")
    with pytest.raises(UserError, match="lama_thin cannot reach hole ratio 0.5-0.6 at 64 px.*max_tamper_area"):
        M.generate_binned("lama_thin", 64, [(0.1, 0.2), (0.5, 0.6)], 2, seed=0)


def test_mask_bins_have_independent_streams():
    both = M.generate_binned("lama_medium", 64, [(0.1, 0.2), (0.3, 0.4)], 5, seed=9)
    alone = M.generate_binned("lama_medium", 64, [(0.3, 0.4)], 5, seed=9)
    assert all(np.array_equal(a, b) for a, b in zip(both[1].masks, alone[0].masks))
    # the documented stream: natural draws from seed_for(seed, protocol, bin label), kept when in the bin
    rng = np.random.default_rng(seed_for(9, "lama_medium", "30-40"))
    kept = []
    while len(kept) < 5:
        hole = G.lama_medium(64, 64, rng)
        if 0.3 < hole.mean() <= 0.4:
            kept.append(hole)
    assert alone[0].fill == "natural" and all(np.array_equal(a, b) for a, b in zip(kept, alone[0].masks))
    other = M.generate_binned("lama_medium", 64, [(0.3, 0.4)], 5, seed=10)
    assert not all(np.array_equal(a, b) for a, b in zip(other[0].masks, alone[0].masks))


def test_mask_pool_mixed_ratios():
    pool = M.generate_pool("lama_medium", 64, 200, seed=0)
    r = np.array([M.hole_ratio(h) for h in pool])
    assert len(pool) == 200 and r.min() > 0 and r.max() <= 0.5 and r.std() > 0.08
    again = M.generate_pool("lama_medium", 64, 200, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(pool, again))


def test_mask_stats_histogram():
    bins = M.generate_binned("box_random", 64, [(0.1, 0.2), (0.4, 0.5)], 10, seed=0)
    st = M.stats("box_random", bins)
    hist = [c for c in st.columns if c.startswith("hist_")]
    assert len(hist) == 20
    assert (st[hist].sum(axis=1) == st["count"]).all() and list(st["count"]) == [10, 10]
    assert st.loc[0, ["hist_10-15", "hist_15-20"]].sum() == 10 and st.loc[1, ["hist_40-45", "hist_45-50"]].sum() == 10
    assert (st.hole_min > st.lo).all() and (st.hole_max <= st.hi).all()
    row = M.ratio_stats("p", "x", 0, 1, "f", [0.1, 0.0, 1.0])         # edges: (lo, hi], 0 in the first bin
    assert row["hist_5-10"] == 1 and row["hist_0-5"] == 1 and row["hist_95-100"] == 1


# ---------------------------------------------------------------------------------------------- CLI

def _generate(out, *extra, seed="0", protocol="lama_medium", bins="0.1:0.2,0.3:0.4", count="4"):
    return masks_stage.main(["generate", "--protocol", protocol, "--size", "64", "--bins", bins, "--count", count,
                   "--seed", seed, "--out", str(out), *extra])


def _png_bytes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_mask_cli_generate_writes_white_holes_and_stats(tmp_path):
    out = tmp_path / "masks"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old")
    assert _generate(out) == 0
    assert not (out / "stale.png").exists()
    files = sorted(out.glob("*/*.png"))
    assert [f.relative_to(out).as_posix() for f in files] == [f"{b}/{k:04d}.png" for b in ("10-20", "30-40")
                                                             for k in range(4)]
    for f in files:
        arr = _read_png(f)
        assert arr.dtype == np.uint8 and arr.shape == (64, 64) and set(np.unique(arr)) <= {0, 255}
        lo = 0.1 if f.parent.name == "10-20" else 0.3
        assert lo < (arr == 255).mean() <= lo + 0.1          # white = hole
    st = pd.read_csv(out / "stats.csv", dtype={"bin": str})
    assert list(st["bin"]) == ["10-20", "30-40"] and list(st["count"]) == [4, 4]
    assert {"protocol", "fill", "hole_min", "hole_mean", "hole_max", "hist_0-5"} <= set(st.columns)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_mask_cli_determinism(tmp_path):
    _generate(tmp_path / "a")
    _generate(tmp_path / "b")
    _generate(tmp_path / "c", seed="1")
    a, b, c = (_png_bytes(tmp_path / n) for n in "abc")
    assert a == b and len(a) == 8
    assert a.keys() == c.keys() and a != c
    assert masks_stage.main(["pool", "--protocol", "deepfill", "--size", "64", "--count", "12", "--seed", "5",
                   "--out", str(tmp_path / "p1")]) == 0
    masks_stage.main(["pool", "--protocol", "deepfill", "--size", "64", "--count", "12", "--seed", "5",
            "--out", str(tmp_path / "p2")])
    p1 = _png_bytes(tmp_path / "p1")
    assert p1 == _png_bytes(tmp_path / "p2") and sorted(p1) == [f"{k:05d}.png" for k in range(12)]
    st = pd.read_csv(tmp_path / "p1" / "stats.csv")
    assert st.loc[0, "count"] == 12 and st.loc[0, "bin"] == "pool"


def test_mask_cli_repaint_needs_no_bins(tmp_path):
    masks_stage.main(["generate", "--protocol", "repaint_expand", "--size", "256", "--count", "3", "--seed", "0",
            "--out", str(tmp_path / "m")])
    (f,) = (tmp_path / "m").glob("*/*.png")
    assert f.parent.name == "expand" and (_read_png(f) == 255).mean() == 0.9375


@pytest.mark.parametrize("args, match", [
    (["--bins", "0.5:0.2"], "0 <= lo < hi <= 1"),
    (["--bins", "0.8:1.5"], "0 <= lo < hi <= 1"),
    (["--bins", "ten:twenty"], "lo:hi"),
    (["--size", "0"], "positive"),
    (["--protocol", "nope"], "unknown mask protocol"),
])
def test_mask_cli_bad_input_is_user_error(tmp_path, args, match):
    base = {"--protocol": "lama_thin", "--size": "64", "--bins": "0.1:0.2", "--count": "2", "--seed": "0",
            "--out": str(tmp_path / "m")}
    base.update(dict(zip(args[::2], args[1::2])))
    with pytest.raises(UserError, match=match):
        masks_stage.main(["generate", *[x for kv in base.items() for x in kv]])
    assert list(tmp_path.iterdir()) == []


def test_mask_cli_failed_run_leaves_old_output(tmp_path):
    out = tmp_path / "m"
    _generate(out)
    before = _png_bytes(out)
    with pytest.raises(UserError, match="cannot reach"):
        _generate(out, protocol="lama_thin", bins="0.1:0.2,0.6:0.7", seed="4")
    assert _png_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# ---------------------------------------------------------------------------------------------- NVIDIA

# file k's hole covers ROWS[5 - k // 2] of 32 rows: the file order says NVIDIA bin k // 2, the
# content says bin 5 - k // 2, so index and ratio binning must disagree.
ROWS = [2, 4, 8, 12, 14, 18]          # ratios 0.0625, 0.125, 0.25, 0.375, 0.4375, 0.5625


def _nvidia_folder(tmp_path) -> Path:
    folder = tmp_path / "nvidia" / "testing_mask_dataset"
    folder.mkdir(parents=True)
    for k in reversed(range(12)):                         # creation order must not matter
        arr = np.full((32, 32), 40, np.uint8)             # grey-ish known, light-grey hole: binarised at 128
        arr[: ROWS[5 - k // 2]] = 220
        Image.fromarray(arr).save(folder / f"{k:05d}.png")
    return tmp_path / "nvidia"


def _nvidia_zip(tmp_path, folder: Path) -> Path:
    path = tmp_path / "mask.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(folder.rglob("*.png"), reverse=True):
            zf.write(f, f.relative_to(folder).as_posix())
    return path


def test_mask_nvidia_index_binning_and_border(tmp_path):
    folder = _nvidia_folder(tmp_path)
    for source in (folder, _nvidia_zip(tmp_path, folder)):
        bins = M.generate_binned("nvidia", 16, [(0.1, 0.2), (0.3, 0.4), (0.0, 0.1)], 2, seed=0,
                                 nvidia_source=source, nvidia_per_bin=2)
        assert [sorted(Path(s).name for s in b.sources) for b in bins] == \
            [["00002.png", "00003.png"], ["00006.png", "00007.png"], ["00000.png", "00001.png"]]
        # index binning trusts the file order: bin 10-20 (files 2, 3) holds 14-row masks
        assert all(m.shape == (16, 16) and set(np.unique(m)) <= {0, 1} for b in bins for m in b.masks)
        assert all(M.hole_ratio(m) == 14 / 32 for m in bins[0].masks)
        (w,) = M.generate_binned("nvidia", 16, [(0.1, 0.2)], 5, seed=0, nvidia_source=source,
                                 nvidia_per_bin=2, nvidia_border="with")
        (wo,) = M.generate_binned("nvidia", 16, [(0.1, 0.2)], 5, seed=0, nvidia_source=source,
                                  nvidia_per_bin=2, nvidia_border="without")
        assert [Path(s).name for s in w.sources] == ["00002.png"] and [Path(s).name for s in wo.sources] == ["00003.png"]
    with pytest.raises(UserError, match="not an NVIDIA bin"):
        M.generate_binned("nvidia", 16, [(0.15, 0.25)], 2, seed=0, nvidia_source=folder, nvidia_per_bin=2)


def test_mask_nvidia_ratio_binning_and_resize(tmp_path):
    folder = _nvidia_folder(tmp_path)
    bins = M.generate_binned("nvidia", 64, [(0.1, 0.2), (0.4, 0.5)], 4, seed=0, nvidia_source=folder,
                             nvidia_binning="ratio", nvidia_per_bin=2)
    assert sorted(Path(s).name for s in bins[0].sources) == ["00008.png", "00009.png"]   # 4 rows of 32
    assert sorted(Path(s).name for s in bins[1].sources) == ["00002.png", "00003.png"]   # 14 rows of 32
    for b in bins:
        for m in b.masks:                                 # NEAREST upscaling keeps exact binary rows
            assert m.shape == (64, 64) and set(np.unique(m)) == {0, 1}
            rows = int(m[:, 0].sum())
            assert m[:rows].all() and not m[rows:].any()
            assert b.lo < M.hole_ratio(m) <= b.hi


def test_mask_nvidia_cli_and_errors(tmp_path):
    folder = _nvidia_folder(tmp_path)
    out = tmp_path / "out"
    assert masks_stage.main(["generate", "--protocol", "nvidia", "--size", "16", "--bins", "0.2:0.3", "--count", "2",
                   "--seed", "0", "--out", str(out), "--nvidia-source", str(folder), "--nvidia-per-bin", "2"]) == 0
    assert sorted(p.name for p in (out / "20-30").iterdir()) == ["0000.png", "0001.png"]
    listing = pd.read_csv(out / "masks.csv")
    assert sorted(Path(s).name for s in listing.source) == ["00004.png", "00005.png"]
    with pytest.raises(UserError, match="not found"):
        M.generate_binned("nvidia", 16, [(0.1, 0.2)], 2, 0, nvidia_source=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no PNG masks"):
        M.generate_binned("nvidia", 16, [(0.1, 0.2)], 2, 0, nvidia_source=tmp_path / "empty")
    (folder / "testing_mask_dataset" / "00002.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="00002.png: cannot read mask"):
        M.generate_binned("nvidia", 16, [(0.1, 0.2)], 2, 0, nvidia_source=folder, nvidia_per_bin=2)
    with pytest.raises(UserError, match="nvidia_source"):
        M.generate_binned("nvidia", 16, [(0.1, 0.2)], 2, 0)


# ---------------------------------------------------------------------------------------------- pairing

@pytest.fixture
def mask_dir(tmp_path):
    out = tmp_path / "masks"
    M.write_binned(out, "box_random", M.generate_binned("box_random", 32, [(0.1, 0.2), (0.3, 0.4)], 5, seed=0))
    return out


def test_mask_pairs_deterministic_and_order_independent(mask_dir):
    ids = [f"{k:04d}" for k in range(10)]
    a = M.make_pairs(ids, [(0.1, 0.2), (0.3, 0.4)], mask_dir, 7, seed=2)
    b = M.make_pairs(list(reversed(ids)) + ids[:3], ["10-20", "30-40"], mask_dir, 7, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == ["image_id", "bin", "mask", "hole_ratio"] and len(a) == 14
    assert list(a.image_id[:7]) == ids[:7]
    for label, lo in (("10-20", 0.1), ("30-40", 0.3)):
        part = a[a.bin == label].reset_index(drop=True)
        files = sorted((mask_dir / label).glob("*.png"))
        perm = np.random.default_rng(seed_for(2, "pairs", label)).permutation(5)
        assert list(part["mask"]) == [str(files[perm[i % 5]]) for i in range(7)]
        assert part["mask"].value_counts().max() - part["mask"].value_counts().min() <= 1
        assert ((part.hole_ratio > lo) & (part.hole_ratio <= lo + 0.1)).all()
    c = M.make_pairs(ids, None, mask_dir, 7, seed=3)
    assert set(c.bin) == {"10-20", "30-40"} and list(c["mask"]) != list(a["mask"])


def test_mask_hole_ratio_is_one_measure_in_memory_and_on_file(mask_dir):
    # the ratios written at generation (masks.csv), read back for pairing and measured by `masks stats`
    # are the same exact fractions
    listing = pd.read_csv(mask_dir / "masks.csv", dtype={"bin": str})
    written = dict(zip(listing.file, listing.hole_ratio))
    pairs = M.make_pairs([f"{k:04d}" for k in range(5)], None, mask_dir, 5, seed=0)
    assert len(pairs) == 10
    for path, ratio in zip(pairs["mask"], pairs.hole_ratio):
        assert ratio == written[Path(path).relative_to(mask_dir).as_posix()]
        assert ratio == np.count_nonzero(_read_png(path) == 255) / _read_png(path).size
    generated = pd.read_csv(mask_dir / "stats.csv", dtype={"bin": str}).set_index("bin")
    measured = M.measure(mask_dir).set_index("bin")
    for col in ("count", "hole_min", "hole_mean", "hole_max", "hist_10-15", "hist_15-20", "hist_30-35", "hist_35-40"):
        assert list(measured[col]) == list(generated.loc[measured.index, col]), col


def test_mask_pairs_too_few_images(mask_dir):
    with pytest.raises(UserError, match=r"only 3 test images but n_test = 4.*n_test"):
        M.make_pairs(["a", "b", "c"], [(0.1, 0.2)], mask_dir, 4, seed=0)
    with pytest.raises(UserError, match="masks generate"):
        M.make_pairs(["a", "b", "c"], [(0.5, 0.6)], mask_dir, 2, seed=0)


def test_mask_pairs_cli_reads_manifest(mask_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = pd.DataFrame(dict(id=["0007", "0002", "0005", "0001", "0009"],
                                 source=["x"] * 5, split=["test", "train", "test", "test", "test"]))
    manifest.to_csv("manifest.csv", index=False)
    assert masks_stage.main(["pairs", "--manifest", "manifest.csv", "--masks", "masks", "--bins", "0.3:0.4",
                   "--n-test", "3", "--seed", "0", "--out", "pairs.csv"]) == 0
    pairs = pd.read_csv("pairs.csv", dtype={"image_id": str, "bin": str})
    assert list(pairs.columns) == ["image_id", "bin", "mask", "hole_ratio"]
    assert list(pairs.image_id) == ["0001", "0005", "0007"] and set(pairs.bin) == {"30-40"}
    assert all(m.startswith("masks/30-40/") and Path(m).exists() for m in pairs["mask"])
    with pytest.raises(UserError, match="only 4 test images but n_test = 5"):
        masks_stage.main(["pairs", "--manifest", "manifest.csv", "--masks", "masks", "--n-test", "5", "--seed", "0",
                "--out", "p2.csv"])
