"""Outside methods as rows (strdiffusion/inpainting/outside.py): the import stage's protocol, the config, the table, and
the round trip through the workflow: export the pairs, run OpenCV's Telea on the exported files here, score
the results as an outside method, and get the built-in Telea row.

Metric weights are random-weight stand-ins with the real file names under a temporary $TORCH_HOME (the real
Inception and AlexNet weights are absent offline), so LPIPS, FID and KID are computed, not n/a."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from support.workflow import TINY, make_workdir, snakemake

from strdiffusion.inpainting import outside as external
from strdiffusion.inpainting.run import classical_inpaint
from strdiffusion.io.errors import UserError
from strdiffusion.metrics.nets import write_standin_weights
from strdiffusion.reporting import tables as tables
from strdiffusion.settings import external as external_rows
from strdiffusion.settings.config import validate
from strdiffusion.settings.jobs import ImportSettings, job_options
from strdiffusion.settings.values import OutsideRows
from strdiffusion.stages import metrics as metrics_stage
from strdiffusion.stages import tables as tables_stage

BIN = "10-20"


def _photo(seed: int, size: int = 32) -> np.ndarray:
    from skimage.data import astronaut

    y, x = (37 * seed) % 400, (53 * seed + 150) % 400
    return np.ascontiguousarray(astronaut()[y:y + 2 * size:2, x:x + 2 * size:2])


def _hole(seed: int, size: int = 32) -> np.ndarray:
    """A rectangular hole (bool HxW, True = hole) of about 15 % of the image."""
    rng = np.random.default_rng(seed)
    hole = np.zeros((size, size), bool)
    y, x = rng.integers(0, size - 12, 2)
    hole[y:y + 12, x:x + 12] = True
    return hole


@pytest.fixture
def test_set(tmp_path):
    """Six test images, their masks (white = hole) and a pairs CSV of one bin."""
    gt, masks = tmp_path / "gt", tmp_path / "masks"
    gt.mkdir()
    masks.mkdir()
    rows = []
    for i in range(6):
        Image.fromarray(_photo(i)).save(gt / f"img{i}.png")
        Image.fromarray(_hole(i).astype(np.uint8) * 255).save(masks / f"m{i}.png")
        rows.append({"image_id": f"img{i}", "bin": BIN, "mask": str(masks / f"m{i}.png"), "hole_ratio": _hole(i).mean()})
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    return tmp_path


def _telea_outputs(root: Path, out: Path, ext=".png", hole_of=_hole, **save):
    """Telea on each test image of ``root`` with ``hole_of(i)``'s holes, as an outside code would (not composited)."""
    out.mkdir(parents=True, exist_ok=True)
    for i in range(6):
        image = np.asarray(Image.open(root / "gt" / f"img{i}.png"))
        hole = hole_of(i).astype(np.uint8) * 255
        result = cv2.inpaint(np.where(hole[..., None] > 0, 0, image).astype(np.uint8), hole, 3, cv2.INPAINT_TELEA)
        Image.fromarray(result).save(out / f"img{i}{ext}", **save)


def _import(root: Path, template: str, out="imported", method="outside", **settings):
    s = ImportSettings(path=str(template), **settings)
    return external.import_bin(root / "pairs.csv", root / "gt", BIN, method, "toy", s, root / out)


def _read(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_external_import_composites_known_pixels_unless_scored_as_is(test_set):
    outside = test_set / "outside"
    _telea_outputs(test_set, outside)
    for i in range(6):  # an outside code that also touches known pixels a little
        path = outside / f"img{i}.png"
        Image.fromarray(np.clip(_read(path).astype(int) + 3, 0, 255).astype(np.uint8)).save(path)
    record = _import(test_set, outside / "{image_id}.png")
    assert record["composited"] and record["scored"] == 6 and record["missing"] == []
    as_is = _import(test_set, outside / "{image_id}.png", out="as_is", as_is=True)
    assert not as_is["composited"]
    for i in range(6):
        known = ~_hole(i)
        gt, raw = _photo(i), _read(outside / f"img{i}.png")
        composited, delivered = _read(test_set / "imported" / f"img{i}.png"), _read(test_set / "as_is" / f"img{i}.png")
        assert np.array_equal(composited[known], gt[known]) and np.array_equal(composited[~known], raw[~known])
        assert np.array_equal(delivered, raw)
        # the composited row is the built-in Telea's output, pixel for pixel, up to the +3 in known pixels
        builtin = classical_inpaint("telea", gt, known.astype(np.float32))
        assert np.abs(builtin.astype(int) - np.clip(composited.astype(int), 0, 255)).max() <= 3
    sidecar = json.loads((test_set / "imported" / external_rows.SIDECAR).read_text())
    assert sidecar["path"].endswith("{image_id}.png") and sidecar["composited"] is True


def test_external_other_size_is_one_line_error_naming_both_sizes_unless_resized(test_set):
    outside = test_set / "outside"
    _telea_outputs(test_set, outside)
    big = _read(outside / "img3.png").repeat(2, axis=0).repeat(2, axis=1)
    Image.fromarray(big).save(outside / "img3.png")
    with pytest.raises(UserError) as err:
        _import(test_set, outside / "{image_id}.png")
    message = str(err.value)
    assert "\n" not in message and "img3.png" in message and "64x64" in message and "32x32" in message
    assert "resize" in message and not (test_set / "imported").exists()  # nothing half-written
    _import(test_set, outside / "{image_id}.png", resize="area")
    assert _read(test_set / "imported" / "img3.png").shape == (32, 32, 3)
    # area downsampling of a 2x nearest upsampling is the original: the resized output is the plain one
    _telea_outputs(test_set, test_set / "plain")
    assert np.array_equal(_read(test_set / "imported" / "img3.png"), _read(test_set / "plain" / "img3.png"))


def test_external_jpeg_outputs_are_read_like_png(test_set, caplog):
    _telea_outputs(test_set, test_set / "png")
    _telea_outputs(test_set, test_set / "jpeg", ext=".jpg", quality=75)
    with caplog.at_level(logging.WARNING, logger="strdiffusion.inpainting.outside"):
        png = _import(test_set, test_set / "png" / "{image_id}.png", out="from_png")
        jpeg = _import(test_set, test_set / "jpeg" / "{image_id}.jpg", out="from_jpeg")
    assert png["known_pixels_differ"] == 0 and jpeg["known_pixels_differ"] == 0  # JPEG noise is not a mismatch
    assert "differ" not in caplog.text
    for i in range(6):
        a, b = _read(test_set / "from_png" / f"img{i}.png"), _read(test_set / "from_jpeg" / f"img{i}.png")
        jpeg_pixels = np.asarray(Image.open(test_set / "jpeg" / f"img{i}.jpg").convert("RGB"))
        hole = _hole(i)
        assert np.array_equal(b[hole], jpeg_pixels[hole]) and np.array_equal(a[~hole], b[~hole])
        assert np.abs(a.astype(int) - b.astype(int))[hole].mean() < 10  # decoded, not garbage


def _other_hole(i: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(1000 + i)
    hole = np.zeros((size, size), bool)
    y, x = rng.integers(0, size - 16, 2)
    hole[y:y + 16, x:x + 16] = True
    return hole


def test_external_outputs_for_other_masks_give_a_one_line_warning(test_set, caplog):
    other = test_set / "other"  # a weak method's outputs for other (larger) masks
    other.mkdir()
    for i in range(6):
        Image.fromarray(classical_inpaint("mean_fill", _photo(i), (~_other_hole(i)).astype(np.float32))).save(other / f"img{i}.png")
    with caplog.at_level(logging.WARNING, logger="strdiffusion.inpainting.outside"):
        record = _import(test_set, test_set / "other" / "{image_id}.png", method="mat")
    warnings = [r.getMessage() for r in caplog.records if "differ" in r.getMessage()]
    assert record["known_pixels_differ"] > 3 and len(warnings) == 1
    assert "mat bin 10-20" in warnings[0] and "other masks" in warnings[0] and "\n" not in warnings[0]


def test_external_missing_outputs_error_or_partial_row_with_its_image_count(test_set):
    outside = test_set / "outside"
    _telea_outputs(test_set, outside)
    for i in (1, 4):
        (outside / f"img{i}.png").unlink()
    with pytest.raises(UserError) as err:
        _import(test_set, outside / "{image_id}.png")
    message = str(err.value)
    assert "\n" not in message and "2 of 6 outputs missing" in message and "img1, img4" in message
    assert "allow_partial" in message
    record = _import(test_set, outside / "{image_id}.png", allow_partial=True)
    assert record["scored"] == 4 and record["missing"] == ["img1", "img4"]
    # the metric stage scores the four, the built-in row all six
    per_image = {}
    for method, pred in (("outside", test_set / "imported"), ("telea", test_set / "builtin")):
        if method == "telea":
            pred.mkdir()
            for i in range(6):
                Image.fromarray(classical_inpaint("telea", _photo(i), (~_hole(i)).astype(np.float32))).save(pred / f"img{i}.png")
        per_image[method] = test_set / f"{method}.csv"
        assert metrics_stage.main(["images", "--pairs", str(test_set / "pairs.csv"), "--gt-dir", str(test_set / "gt"),
                             "--pred-dir", str(pred), "--method", method, "--bin", BIN, "--metrics", "psnr,ssim,l1",
                             "--out", str(per_image[method])]) == 0
    scored = pd.read_csv(per_image["outside"], dtype={"image_id": str})
    assert sorted(scored.image_id) == ["img0", "img2", "img3", "img5"]
    full = pd.read_csv(per_image["telea"], dtype={"image_id": str}).set_index("image_id")
    assert np.allclose(scored.set_index("image_id").psnr, full.psnr.loc[scored.image_id])  # same images, same values
    long, unavailable = tables.summarise(list(per_image.values()), [], ["telea", "outside"], [BIN])
    rows = OutsideRows(json.dumps({"outside": {"name": "Telea outside", "allow_partial": True}}))
    assert str(OutsideRows(str(rows))) == str(rows) and rows.by_method()["outside"].resize == "none"
    md, _ = tables.render(long, unavailable, ["telea", "outside"], [BIN], ["psnr"], "toy", external=rows.by_method())
    assert "| Telea outside (4/6 images) |" in md and "| Telea (OpenCV) |" in md
    # with every output present, all of one row error out: at least one output is needed
    with pytest.raises(UserError, match="6 of 6 outputs missing"):
        _import(test_set, test_set / "nowhere" / "{image_id}.png", allow_partial=True)


def test_external_partial_row_has_a_blank_panel_in_the_qualitative_grid(test_set):
    from strdiffusion.reporting import figures as figures

    outside = test_set / "outside"
    _telea_outputs(test_set, outside)
    (outside / "img1.png").unlink()
    inpaint = test_set / "inpaint"
    _import(test_set, outside / "{image_id}.png", out=f"inpaint/lama/{BIN}/imported", allow_partial=True)
    pairs = pd.read_csv(test_set / "pairs.csv", dtype={"image_id": str, "bin": str})
    png = test_set / "fig" / "qualitative.png"
    figures.qualitative(pairs, test_set / "gt", test_set / "no_structure", inpaint, ["lama"], [BIN], 2, png,
                        names={"lama": "LaMa"})
    assert png.stat().st_size > 1000 and png.with_suffix(".pdf").is_file()
    (inpaint / "lama" / BIN / "imported" / "img0.png").unlink()  # an output lost after the import: an error
    with pytest.raises(UserError, match="no output for image 'img0'"):
        figures.qualitative(pairs, test_set / "gt", test_set / "no_structure", inpaint, ["lama"], [BIN], 2, png)


def test_external_rows_are_named_and_their_protocol_footnoted(tmp_path):
    files = []
    for method, psnr in (("telea", 25.0), ("lama", 27.0), ("mat", 26.0)):
        df = pd.DataFrame({"method": method, "bin": BIN, "image_id": [f"i{k}" for k in range(4)], "psnr": psnr + np.arange(4),
                           "ssim": 0.8, "l1": 0.1, "lpips": 0.2})
        files.append(tmp_path / f"{method}.csv")
        df.to_csv(files[-1], index=False)
    rows = {"lama": {"name": "LaMa & co_1", "resize": "bicubic"}, "mat": {"name": "MAT", "as_is": True}}
    prefix = tmp_path / "out" / "toy"
    assert tables_stage.main(["--per-image", *map(str, files), "--methods", "telea,lama,mat", "--bins", BIN,
                        "--dataset", "toy", "--external", json.dumps(rows), "--out", str(prefix)]) == 0
    md, tex = (tmp_path / "out" / "toy.md").read_text(), (tmp_path / "out" / "toy.tex").read_text()
    assert "| LaMa & co_1 | **28.50**" in md and "| MAT | 27.50" in md
    note = next(line for line in md.splitlines() if "external_methods" in line)
    assert "LaMa & co_1: known pixels copied from the input" in note and "MAT: scored as delivered" in note
    assert "resized (bicubic)" in note
    assert r"LaMa \& co\_1 &" in tex  # a user's name cannot break the LaTeX table
    plain = tmp_path / "plain" / "toy"
    assert tables_stage.main(["--per-image", str(files[0]), "--methods", "telea", "--bins", BIN, "--dataset", "toy",
                        "--out", str(plain)]) == 0
    assert "external_methods" not in (tmp_path / "plain" / "toy.md").read_text()


def test_external_config_errors_are_one_line_and_name_the_key(repo_root):
    config = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    cases = [({"telea": {"name": "x", "path": "a/{image_id}.png"}}, "external_methods.telea"),
             ({"lama": {"name": "LaMa", "path": "a/{bin}.png"}}, "external_methods.lama.path"),
             ({"lama": {"name": "LaMa", "path": "a/{split}/{image_id}.png"}}, "{split}"),
             ({"lama": {"path": "a/{image_id}.png"}}, "'name' is a required property"),
             ({"lama": {"name": "LaMa", "path": "a/{image_id}.png", "resize": "cubic"}}, "external_methods.lama.resize")]
    for rows, expected in cases:
        with pytest.raises(UserError) as err:
            validate({**config, "external_methods": rows})
        assert expected in str(err.value) and "\n" not in str(err.value)
    ok = validate({**config, "external_methods": {"lama": {"name": "LaMa", "path": "r/{dataset}/{bin}/{image_id}_mask.png"}}})
    assert ok["external_methods"]["lama"] == {"name": "LaMa", "path": "r/{dataset}/{bin}/{image_id}_mask.png",
                                              "as_is": False, "resize": "none", "allow_partial": False}
    assert job_options("import", ok, dataset="builtin", method="lama", bin=BIN) == \
        "--path 'r/{dataset}/{bin}/{image_id}_mask.png' --resize none"


def test_external_rows_outputs_are_found_where_the_metric_jobs_look(tmp_path, monkeypatch):
    config = {"methods": ["telea"], "external_methods": {"lama": {"path": "res/lama/{dataset}/{bin}/{image_id}_mask.png"}}}
    assert external_rows.row_methods(config) == ["telea", "lama"]
    assert external_rows.prediction_dirs(config, "ds", "lama", [BIN], range(3)) == [f"results/ds/inpaint/lama/{BIN}/imported"]
    assert external_rows.prediction_dirs(config, "ds", "telea", [BIN], range(2)) == \
        [f"results/ds/inpaint/telea/{BIN}/shard_0", f"results/ds/inpaint/telea/{BIN}/shard_1"]
    assert external_rows.output_folder("res/lama/{dataset}/{bin}/{image_id}_mask.png", "ds", BIN) == f"res/lama/ds/{BIN}"
    assert external_rows.output_folder("out/{bin}/{image_id}/result.png", "ds", BIN) == f"out/{BIN}"
    assert external_rows.output_folder("{image_id}.png", "ds", BIN) == ""
    monkeypatch.chdir(tmp_path)  # the outputs' folder is an input of the import job once it exists
    assert "outputs" not in external_rows.import_inputs(config, "ds", "lama", BIN)
    (tmp_path / f"res/lama/ds/{BIN}").mkdir(parents=True)
    assert external_rows.import_inputs(config, "ds", "lama", BIN)["outputs"] == f"res/lama/ds/{BIN}"


def test_external_empty_leaves_the_default_dry_run_unchanged(tmp_path, repo_root):
    """An empty external_methods is the default: the same jobs and commands, none to import or export."""
    config = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    outputs = []
    for name, extra in (("absent", {}), ("empty", {"external_methods": {}})):
        work = make_workdir(tmp_path / name, repo_root, {**config, **extra})
        shutil.copytree(repo_root / "checkpoints", work / "checkpoints")
        res = snakemake(work, "-n", "-p", torch_home=tmp_path)
        outputs.append(sorted(line for line in res.stdout.splitlines() if "python -m strdiffusion" in line))
    assert outputs[0] == outputs[1] and len(outputs[0]) > 100
    assert not [line for line in outputs[0] if "strdiffusion import" in line or "strdiffusion export" in line]
    table = next(line for line in outputs[0] if "strdiffusion tables" in line)
    assert "--external" not in table and "--methods mean_fill,telea," in table


# ---------------------------------------------------------------------------- the round trip


@pytest.mark.slow
def test_external_round_trip_telea_outside_equals_the_builtin_telea_row(tmp_path, repo_root):
    torch_home = tmp_path / "torch_home"
    write_standin_weights(torch_home / "hub" / "checkpoints")
    # the cheapest run that shows it: one classical row, one bin of four pairs, one shard
    masks = {**TINY["datasets"]["builtin"]["masks"], "bins": [[0.1, 0.2]]}
    config = {**TINY, "methods": ["telea"], "datasets": {"builtin": {**TINY["datasets"]["builtin"], "masks": masks}},
              "sampling": {**TINY["sampling"], "shard_size": 4}}
    work = make_workdir(tmp_path / "run", repo_root, config)
    snakemake(work, "export", "--printshellcmds", torch_home=torch_home)
    export = work / "results/builtin/export"
    manifest = pd.read_csv(export / "manifest.csv", dtype={"image_id": str, "bin": str})
    assert list(manifest.bin.unique()) == ["10-20"] and len(manifest) == 4
    # OpenCV's Telea on the exported files, as another code would run on LaMa's layout
    for row in manifest.itertuples():
        image = np.asarray(Image.open(export / "lama" / row.bin / f"{row.image_id}.png").convert("RGB"))
        hole = np.asarray(Image.open(export / "lama" / row.bin / f"{row.image_id}_mask.png").convert("L"))
        assert (hole > 127).mean() == pytest.approx(row.hole_ratio)
        result = cv2.inpaint(np.where(hole[..., None] > 127, 0, image).astype(np.uint8), hole, 3, cv2.INPAINT_TELEA)
        out = work / "resources/outside" / row.bin / f"{row.image_id}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(result).save(out)
    rows = {"outside_telea": {"name": "Telea, run outside", "path": "resources/outside/{bin}/{image_id}.png"}}
    (work / "tiny.yaml").write_text(yaml.safe_dump({**config, "external_methods": rows}))
    snakemake(work, torch_home=torch_home)
    table = pd.read_csv(work / "results/tables/builtin.csv", dtype={"bin": str})
    builtin = table[table.method == "telea"].set_index(["bin", "metric"])
    outside = table[table.method == "outside_telea"].set_index(["bin", "metric"])
    assert set(builtin.index) == set(outside.index) and len(builtin) == 6  # psnr ssim l1 lpips fid kid
    assert builtin.value.notna().all()  # the stand-in weights made LPIPS, FID and KID real numbers
    assert np.array_equal(builtin.value.loc[outside.index].to_numpy(), outside.value.to_numpy())
    assert np.array_equal(builtin.n.loc[outside.index].to_numpy(), outside.n.to_numpy())
    md = (work / "results/tables/builtin.md").read_text()
    cells = {name: next(line for line in md.splitlines() if line.startswith(f"| {name} |")).split("|")[2:]
             for name in ("Telea (OpenCV)", "Telea, run outside")}
    assert cells["Telea (OpenCV)"] == cells["Telea, run outside"]  # to the printed digit
    assert "Telea, run outside: known pixels copied from the input" in md
    assert "Telea, run outside" in (work / "results/tables/builtin.tex").read_text()
    for figure in ("qualitative", "metrics_vs_hole_ratio"):
        assert (work / f"results/figures/builtin/{figure}.png").stat().st_size > 1000
    snakemake(work, "--report", "results/report.html", torch_home=torch_home)
    assert (work / "results/report.html").stat().st_size > 10000
