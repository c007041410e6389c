import json
import math

import numpy as np
import pandas as pd
import pytest

from strdiffusion.reporting import tables as tables
from strdiffusion.stages import tables as tables_stage


def _per_image(tmp_path, method, b, psnr, ssim, lpips=None):
    n = len(psnr)
    df = pd.DataFrame({"method": method, "bin": b, "image_id": [f"img{i}" for i in range(n)], "psnr": psnr,
                       "ssim": ssim, "l1": np.full(n, 0.1), "lpips": lpips if lpips is not None else np.nan})
    path = tmp_path / f"{method}_{b}.csv"
    df.to_csv(path, index=False)
    if lpips is None:
        (tmp_path / f"{method}_{b}.status.json").write_text(json.dumps(  # metrics.status_path
            {"lpips": {"available": False, "reason": "put alexnet-owt-7be5be79.pth into /x/hub/checkpoints"}}))
    return path


def _set(tmp_path, method, b, fid):
    path = tmp_path / f"{method}_{b}_set.csv"
    pd.DataFrame([{"method": method, "bin": b, "n_images": 8, "fid": fid, "kid_mean": 0.01, "kid_std": 0.002}]).to_csv(path, index=False)
    return path


def test_table_means_best_marks_and_na_footnote(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.normal(30, 1, 8)
    files = [
        _per_image(tmp_path, "strdiffusion", "10-20", base, np.full(8, 0.9)),
        _per_image(tmp_path, "telea", "10-20", base - 3, np.full(8, 0.8)),  # consistently worse
    ]
    sets = [_set(tmp_path, "strdiffusion", "10-20", 12.0), _set(tmp_path, "telea", "10-20", 30.0)]
    long, unavailable = tables.summarise(files, sets, ["strdiffusion", "telea"], ["10-20"])
    psnr = long[(long.metric == "psnr")].set_index("method").value
    assert psnr["strdiffusion"] == pytest.approx(base.mean())
    assert psnr["telea"] == pytest.approx(base.mean() - 3)
    telea = long[(long.metric == "psnr") & (long.method == "telea")].iloc[0]
    assert telea.ci_low < telea.value < telea.ci_high
    assert telea.p_vs_strdiffusion < 0.05  # a consistent 3 dB gap over paired images
    assert "lpips" in unavailable
    md, tex = tables.render(long, unavailable, ["strdiffusion", "telea"], ["10-20"], ["psnr", "ssim", "lpips", "fid"],
                            "toy", reference="paris_streetview")
    row = next(line for line in md.splitlines() if line.startswith("| StrDiffusion |"))
    assert f"**{base.mean():.2f}**" in row and "**12.00**" in row and "n/a" in row
    telea_row = next(line for line in md.splitlines() if line.startswith("| Telea"))
    assert "†" in telea_row and "**" not in telea_row
    assert "alexnet-owt-7be5be79.pth" in md
    assert "33.17" in md and "(paper)" in md
    assert r"\toprule" in tex and r"\textbf{" in tex and r"\multicolumn{4}{c}{10-20\%}" in tex


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = rng.normal(0, 1, 10)
    large = rng.normal(0, 1, 1000)
    lo_s, hi_s = tables.bootstrap_ci(small, seed=0)
    lo_l, hi_l = tables.bootstrap_ci(large, seed=0)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5
    assert math.isnan(tables.bootstrap_ci(np.array([1.0]), seed=0)[0])


def test_paired_bootstrap_detects_a_shift_but_not_noise():
    rng = np.random.default_rng(2)
    a = rng.normal(0, 1, 50)
    assert tables.paired_bootstrap_p(a + 0.5, a, seed=0) < 0.01
    assert tables.paired_bootstrap_p(a + rng.normal(0, 0.01, 50), a, seed=0) > 0.05
    assert tables.paired_bootstrap_p(a, a, seed=0) == 1.0


def test_cli_writes_all_three_formats(tmp_path):
    f = _per_image(tmp_path, "telea", "10-20", np.full(4, 25.0), np.full(4, 0.7), lpips=np.full(4, 0.2))
    prefix = tmp_path / "out" / "toy"
    assert tables_stage.main(["--per-image", str(f), "--methods", "telea", "--bins", "10-20", "--dataset", "toy",
                        "--out", str(prefix)]) == 0
    for ext in ("md", "tex", "csv"):
        assert (tmp_path / "out" / f"toy.{ext}").stat().st_size > 0
    csv = pd.read_csv(tmp_path / "out" / "toy.csv")
    assert set(csv.metric) >= {"psnr", "ssim", "lpips"} and (csv.dataset == "toy").all()
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind


def test_clipped_share_is_reported_and_footnoted_above_one_percent(tmp_path):
    files = []
    for method, share in (("strdiffusion", [0.0, 0.02, 0.04, 0.0]), ("irsde", [0.0, 0.0, 0.004, 0.0]),
                          ("telea", None)):
        path = _per_image(tmp_path, method, "40-50", np.full(4, 20.0) + len(method), np.full(4, 0.5),
                          lpips=np.full(4, 0.1))
        if share is not None:
            df = pd.read_csv(path)
            df["clipped"] = share
            df.to_csv(path, index=False)
        files.append(path)
    long, _ = tables.summarise(files, [], ["strdiffusion", "irsde", "telea"], ["40-50"])
    clipped = long[long.metric == "clipped"].set_index("method").value
    assert clipped["strdiffusion"] == pytest.approx(0.015) and clipped["irsde"] == pytest.approx(0.001)
    assert "telea" not in clipped.index
    md, _ = tables.render(long, {}, ["strdiffusion", "irsde", "telea"], ["40-50"], ["psnr"], "x")
    notes = [line for line in md.splitlines() if "outside [0, 1]" in line]
    assert len(notes) == 1 and "StrDiffusion" in notes[0] and "1.5 % in 40-50" in notes[0]


def test_a_metric_not_configured_has_no_column_one_without_weights_is_na(tmp_path):
    """metrics.per_set: [] -> no FID column at all; FID asked for but its weights missing -> an n/a column
    with its footnote (the default's table)."""
    f = _per_image(tmp_path, "telea", "10-20", np.full(4, 25.0), np.full(4, 0.7), lpips=np.full(4, 0.2))
    bare = tmp_path / "bare_set.csv"  # what the set stage writes with no per-set metric
    pd.DataFrame([{"method": "telea", "bin": "10-20", "n_images": 4}]).to_csv(bare, index=False)
    args = ["--per-image", str(f), "--methods", "telea", "--bins", "10-20", "--dataset", "toy"]
    assert tables_stage.main(args + ["--sets", str(bare), "--out", str(tmp_path / "a" / "toy")]) == 0
    md = (tmp_path / "a" / "toy.md").read_text()
    assert "FID" not in md and "PSNR" in md and "LPIPS" in md and "n/a" not in md

    missing = tmp_path / "missing_set.csv"
    pd.DataFrame([{"method": "telea", "bin": "10-20", "n_images": 4, "fid": math.nan}]).to_csv(missing, index=False)
    (tmp_path / "missing_set.status.json").write_text(json.dumps(
        {"fid": {"available": False, "reason": "put pt_inception-2015-12-05-6726825d.pth into /x"}}))
    assert tables_stage.main(args + ["--sets", str(missing), "--out", str(tmp_path / "b" / "toy")]) == 0
    md = (tmp_path / "b" / "toy.md").read_text()
    assert "FID↓" in md and "n/a" in md and "FID n/a: put pt_inception" in md


def test_rows_from_given_checkpoints_are_footnoted_and_fresh_rows_named(tmp_path):
    files = [_per_image(tmp_path, m, "10-20", np.full(4, v), np.full(4, 0.7), lpips=np.full(4, 0.2))
             for m, v in (("irsde", 26.0), ("irsde_fresh", 24.0))]
    prefix = tmp_path / "out" / "toy"
    assert tables_stage.main(["--per-image", *map(str, files), "--methods", "irsde,irsde_fresh", "--bins", "10-20",
                        "--dataset", "toy", "--given", "irsde=checkpoints/laptop/irsde.pt", "--out", str(prefix)]) == 0
    md = (tmp_path / "out" / "toy.md").read_text()
    assert "| IR-SDE (no structure) (trained in this run) | 24.00" in md and "| IR-SDE (no structure) | **26.00**" in md
    assert "sample given checkpoints" in md and "irsde `checkpoints/laptop/irsde.pt`" in md
    assert tables_stage.main(["--per-image", *map(str, files), "--methods", "irsde,irsde_fresh", "--bins", "10-20",
                        "--dataset", "toy", "--out", str(prefix)]) == 0
    assert "given checkpoints" not in (tmp_path / "out" / "toy.md").read_text()
