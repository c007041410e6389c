"""The export stage (strdiffusion/masks/export.py): the test pairs in LaMa's, keep-white and plain layouts."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from strdiffusion.cli import main as cli
from strdiffusion.io.pairs import run_root
from strdiffusion.masks import export
from strdiffusion.masks.bins import hole_ratio


def _pairs(root, ids_bins):
    gt, masks = root / "gt", root / "masks"
    gt.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for k, (image_id, b) in enumerate(ids_bins):
        Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(gt / f"{image_id}.png")
        hole = np.zeros((24, 40), np.uint8)
        hole[2:2 + 3 * (k + 1), 5:25] = 200  # grey above 128 reads as hole
        Image.fromarray(hole).save(masks / f"m{k}.png")
        rows.append({"image_id": image_id, "bin": b, "mask": str(masks / f"m{k}.png")})
    pd.DataFrame(rows).to_csv(root / "pairs.csv", index=False)
    return root / "pairs.csv", gt


def test_export_writes_lama_keep_white_and_plain_layouts_and_a_manifest(tmp_path):
    pairs, gt = _pairs(tmp_path, [("a1", "10-20"), ("b2", "10-20"), ("a1", "30-40")])
    out = tmp_path / "export"
    assert cli(["export", "--pairs", str(pairs), "--gt-dir", str(gt), "--out", str(out)]) == 0
    manifest = pd.read_csv(out / "manifest.csv", dtype={"image_id": str, "bin": str})
    assert list(manifest.columns) == ["image_id", "bin", "mask", "hole_ratio"]
    assert list(zip(manifest.image_id, manifest.bin)) == [("a1", "10-20"), ("b2", "10-20"), ("a1", "30-40")]
    for k, row in enumerate(manifest.itertuples()):
        hole = np.asarray(Image.open(row.mask).convert("L")) >= 128
        assert row.hole_ratio == pytest.approx(hole_ratio(hole)) and row.hole_ratio == pytest.approx(3 * (k + 1) * 20 / 960)
        paths = export.layout_paths(out, row.bin, row.image_id)
        for layout in export.LAYOUTS:  # the test image byte for byte
            assert paths[f"{layout}_image"].read_bytes() == (gt / f"{row.image_id}.png").read_bytes()
        lama, plain, keep = (np.asarray(Image.open(paths[f"{layout}_mask"])) for layout in ("lama", "plain", "keep_white"))
        assert set(np.unique(lama)) == {0, 255} and np.array_equal(lama == 255, hole)  # white = hole
        assert np.array_equal(plain, lama) and np.array_equal(keep, 255 - lama)  # keep-white: white = known
    assert (out / "lama/10-20/b2_mask.png").is_file() and (out / "keep_white/30-40/masks/a1.png").is_file()
    # LaMa's predict.py pairs every *mask*.png under its indir with the image of the name before _mask
    lama_masks = sorted(p.relative_to(out / "lama").as_posix() for p in (out / "lama").rglob("*mask*.png"))
    assert lama_masks == ["10-20/a1_mask.png", "10-20/b2_mask.png", "30-40/a1_mask.png"]
    assert not list(tmp_path.glob(".export*"))  # no temporary folder left


def test_export_missing_test_image_is_one_line_error_and_writes_nothing(tmp_path, capsys):
    pairs, gt = _pairs(tmp_path, [("a1", "10-20"), ("b2", "10-20")])
    (gt / "b2.png").unlink()
    out = tmp_path / "export"
    assert cli(["export", "--pairs", str(pairs), "--gt-dir", str(gt), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "b2.png" in err[0] and err[0].startswith("error:")
    assert not out.exists() and not list(tmp_path.glob(".export*"))


def _run_folder(run):
    """A run's folder as the workflow leaves it: pairs.csv naming its masks relative to the folder holding results/."""
    masks, gt = run / "results/toy/masks/test/10-20", run / "results/toy/data/test"
    masks.mkdir(parents=True)
    gt.mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = []
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(gt / f"i{k}.png")
        hole = np.zeros((24, 40), np.uint8)
        hole[3:9 + k, 4:30] = 255
        Image.fromarray(hole).save(masks / f"m{k}.png")
        rows.append({"image_id": f"i{k}", "bin": "10-20", "mask": f"results/toy/masks/test/10-20/m{k}.png"})
    pd.DataFrame(rows).to_csv(run / "results/toy/masks/pairs.csv", index=False)
    return run / "results/toy/masks/pairs.csv", gt


def test_export_and_import_run_from_another_cwd_read_the_masks_of_the_run_folder(tmp_path, monkeypatch):
    pairs, gt = _run_folder(tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli(["export", "--pairs", "../run/results/toy/masks/pairs.csv", "--gt-dir", str(gt), "--out", "ex"]) == 0
    manifest = pd.read_csv(elsewhere / "ex/manifest.csv")
    assert list(manifest["mask"]) == [f"results/toy/masks/test/10-20/m{k}.png" for k in range(3)]  # as the CSV names it
    for k in range(3):
        exported = np.asarray(Image.open(elsewhere / f"ex/plain/10-20/masks/i{k}.png"))
        assert np.array_equal(exported, np.asarray(Image.open(tmp_path / f"run/results/toy/masks/test/10-20/m{k}.png")))
    # an outside method's outputs (here the test images themselves) imported from the same other folder
    assert cli(["import", "--pairs", str(pairs), "--gt-dir", str(gt), "--bin", "10-20", "--method", "outside",
                "--path", str(gt / "{image_id}.png"), "--out", "imported"]) == 0
    assert sorted(p.name for p in (elsewhere / "imported").glob("*.png")) == ["i0.png", "i1.png", "i2.png"]
    # a copy of the pairs CSV outside any run: --root names the run's folder
    (elsewhere / "pairs.csv").write_bytes(pairs.read_bytes())
    assert cli(["export", "--pairs", "pairs.csv", "--gt-dir", str(gt), "--out", "ex2", "--root", "../run"]) == 0
    assert (elsewhere / "ex2/lama/10-20/i2_mask.png").is_file()


@pytest.mark.parametrize("stage", ["export", "import"])
def test_export_and_import_from_another_cwd_name_a_missing_mask_not_found(tmp_path, monkeypatch, capsys, stage):
    pairs, gt = _run_folder(tmp_path / "run")
    (tmp_path / "run/results/toy/masks/test/10-20/m1.png").unlink()
    monkeypatch.chdir(tmp_path)
    extra = ["--bin", "10-20", "--method", "outside", "--path", str(gt / "{image_id}.png")] if stage == "import" else []
    assert cli([stage, "--pairs", str(pairs), "--gt-dir", str(gt), "--out", "out", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert "results/toy/masks/test/10-20/m1.png: mask not found" in err[0] and "cannot decode" not in err[0]
    assert "1 of the 3 masks" in err[0] and "--root" in err[0]
    assert not (tmp_path / "out").exists()
    # a pairs CSV outside a run's results/, read from the current folder: the same plain line
    (tmp_path / "pairs.csv").write_bytes(pairs.read_bytes())
    assert cli([stage, "--pairs", "pairs.csv", "--gt-dir", str(gt), "--out", "out", *extra]) == 2
    assert "results/toy/masks/test/10-20/m0.png: mask not found (3 of the 3" in capsys.readouterr().err


def test_export_from_another_cwd_finds_the_run_folder_of_a_data_set_named_results(tmp_path, monkeypatch):
    """Two folders named results above the pairs CSV (a data set called "results"): the run's is the one its masks
    are under."""
    run = tmp_path / "run"
    masks, gt = run / "results/results/masks/test/10-20", run / "results/results/data/test"
    masks.mkdir(parents=True)
    gt.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(gt / "a.png")
    Image.fromarray(np.pad(np.full((2, 2), 255, np.uint8), 3)).save(masks / "m.png")
    pairs = run / "results/results/masks/pairs.csv"
    pd.DataFrame([{"image_id": "a", "bin": "10-20", "mask": "results/results/masks/test/10-20/m.png"}]).to_csv(
        pairs, index=False)
    monkeypatch.chdir(tmp_path)
    assert run_root(pairs, probe="results/results/masks/test/10-20/m.png") == run
    assert cli(["export", "--pairs", str(pairs), "--gt-dir", str(gt), "--out", "ex"]) == 0
    assert (tmp_path / "ex/plain/10-20/masks/a.png").is_file()
