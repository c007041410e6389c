"""The results explorer (strdiffusion/reporting/explorer.py): which test images its page shows, that the page
stays bounded, one-line errors, and the page itself in a real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium), on a small run laid out like the workflow's and on the tiny workflow's run.

Run as a script, it takes a screenshot of a page with the test browser (docs/figures/explorer.png):
``python tests/test_explorer.py results/builtin/explorer/index.html docs/figures/explorer.png
'bin=40-50&sort=psnr&minus=irsde&order=desc&outline=1'``.
"""
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from strdiffusion.io.errors import UserError
from strdiffusion.reporting.explorer import build_explorer, select_bin
from strdiffusion.settings.jobs import ExplorerSettings

BINS = ("10-20", "30-40")
METHODS = ("mean_fill", "telea", "strdiffusion")
SHARD = 4
CHROMEDRIVER = "/usr/bin/chromedriver"


def make_run(root: Path, n: int, px: int = 24, seed: int = 0) -> dict:
    """A run's outputs as the workflow lays them out (results/<dataset>/...): ``n`` test pairs per bin, real PNGs,
    outputs in shards of SHARD pairs, and per-image metrics CSVs (seeded values; the explorer only reads them)."""
    rng = np.random.default_rng(seed)
    res = root / "results" / "toy"
    pairs = []
    for k in range(n + 2):  # two test images no bin uses
        image_id = f"img{k:04d}"
        image = rng.integers(0, 255, (px, px, 3), dtype=np.uint8)
        Image.fromarray(image).save(_mk(res / "data/test" / f"{image_id}.png"))
        Image.fromarray(rng.integers(0, 2, (px, px), dtype=np.uint8) * 255).save(
            _mk(res / "structure/test/edge" / f"{image_id}.png"))
    for b in BINS:
        for pos, k in enumerate(rng.permutation(n)):
            image_id = f"img{k:04d}"
            hole = np.zeros((px, px), np.uint8)
            y, x = rng.integers(0, px // 2, 2)
            hole[y:y + px // 3, x:x + px // 3] = 255
            mask = res / "masks/test" / b / f"{pos:05d}.png"
            Image.fromarray(hole).save(_mk(mask))
            pairs.append({"image_id": image_id, "bin": b, "mask": str(mask.relative_to(root))})
            for m in METHODS:
                fill = rng.integers(0, 255, (px, px, 3), dtype=np.uint8)
                Image.fromarray(fill).save(_mk(res / "inpaint" / m / b / f"shard_{pos // SHARD}" / f"{image_id}.png"))
    pd.DataFrame(pairs).to_csv(_mk(res / "masks/pairs.csv"), index=False)
    files = []
    for m in METHODS:
        for b in BINS:
            ids = [p["image_id"] for p in pairs if p["bin"] == b]
            frame = pd.DataFrame({"method": m, "bin": b, "image_id": ids, "psnr": rng.uniform(12, 35, len(ids)),
                                  "ssim": rng.uniform(0.3, 0.99, len(ids)), "l1": rng.uniform(0.01, 0.2, len(ids)),
                                  "lpips": np.nan})
            files.append(res / "metrics" / m / b / "per_image.csv")
            frame.to_csv(_mk(files[-1]), index=False)
    return {"root": root, "res": res, "per_image": files, "out": res / "explorer/index.html"}


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def build(run: dict, monkeypatch, **settings) -> dict:
    """The explorer's page of ``run`` (from the run's folder, like a workflow job), its data returned."""
    monkeypatch.chdir(run["root"])
    s = ExplorerSettings(methods=METHODS, bins=BINS, shard_size=SHARD, **settings)
    res = run["res"].relative_to(run["root"])
    return build_explorer(res / "masks/pairs.csv", res / "data/test", res / "structure/test", res / "inpaint",
                          [f.relative_to(run["root"]) for f in run["per_image"]], res / "explorer/index.html", s)


def per_image(run: dict) -> pd.DataFrame:
    return pd.concat([pd.read_csv(f, dtype={"image_id": str, "bin": str}) for f in run["per_image"]])


def test_explorer_selects_worst_best_median_and_seeded_random_per_bin(tmp_path, monkeypatch):
    run = make_run(tmp_path, n=40)
    data = build(run, monkeypatch, per_group=3, metric="ssim")
    truth = per_image(run)
    for b in BINS:
        items = [it for it in data["items"] if it["bin"] == b]
        assert len(items) == 12 and len({it["id"] for it in items}) == 12
        ranked = truth[(truth.method == "strdiffusion") & (truth.bin == b)].sort_values("ssim").image_id.tolist()
        group = lambda g: {it["id"] for it in items if g in it["groups"]}  # noqa: E731
        assert group("worst") == set(ranked[:3]) and group("best") == set(ranked[-3:])
        assert group("median") == set(ranked[20 - 1:20 + 2])
        assert len(group("random")) == 3 and not group("random") & (group("worst") | group("best") | group("median"))
        pairs = pd.read_csv(run["res"] / "masks/pairs.csv", dtype=str)
        order = pairs[pairs.bin == b].image_id.tolist()
        assert [it["id"] for it in items] == sorted((it["id"] for it in items), key=order.index)  # pair order
    again = build(run, monkeypatch, per_group=3, metric="ssim")
    assert [(it["bin"], it["id"]) for it in again["items"]] == [(it["bin"], it["id"]) for it in data["items"]]
    other = build(run, monkeypatch, per_group=3, metric="ssim", seed=7)
    assert {it["id"] for it in other["items"] if "random" in it["groups"]} != \
        {it["id"] for it in data["items"] if "random" in it["groups"]}
    # lower is better for L1: its worst are the largest values
    values = np.array([0.1, 0.5, 0.2, np.nan, 0.4, 0.3, 0.05, 0.6, 0.7, 0.8])
    groups = select_bin(values, False, 2, seed=0)
    assert {p for p, g in groups.items() if "worst" in g} == {9, 8} and {p for p, g in groups.items() if "best" in g} \
        == {6, 0}
    assert len(groups) == 8 and 3 not in [p for p, g in groups.items() if g != ["random"]]
    # nothing to rank by (LPIPS without its weights): 4 x per_group drawn at random, the same on every build
    unranked = select_bin(np.full(20, np.nan), True, 2, seed=5)
    assert len(unranked) == 8 and all(g == ["random"] for g in unranked.values())
    assert unranked == select_bin(np.full(20, np.nan), True, 2, seed=5) != select_bin(np.full(20, np.nan), True, 2, 6)


def test_explorer_page_stays_the_same_size_as_the_test_set_grows(tmp_path, monkeypatch):
    sizes = []
    for n in (48, 96):
        run = make_run(tmp_path / str(n), n=n, seed=n)
        data = build(run, monkeypatch, per_group=2)
        assert len(data["items"]) == 2 * 8
        sizes.append(run["out"].stat().st_size)
    unranked = build(run, monkeypatch, per_group=2, metric="lpips")  # no LPIPS values: drawn at random
    assert len(unranked["items"]) == 2 * 8 and all(it["groups"] == ["random"] for it in unranked["items"])
    assert 0.8 < sizes[1] / sizes[0] < 1.25, sizes


def test_explorer_shows_every_pair_of_a_small_run_with_every_row(tmp_path, monkeypatch):
    run = make_run(tmp_path, n=6)
    data = build(run, monkeypatch, per_group=2, thumbnail=16)
    assert sorted((it["bin"], it["id"]) for it in data["items"]) == sorted(
        (r.bin, r.image_id) for r in pd.read_csv(run["res"] / "masks/pairs.csv", dtype=str).itertuples())
    truth = per_image(run).set_index(["method", "bin", "image_id"])
    for it in data["items"]:
        assert len(it["links"]["fills"]) == len(METHODS) and all(it["thumbs"]["fills"])
        for r, m in enumerate(METHODS):
            assert (run["out"].parent / it["links"]["fills"][r]).resolve() == \
                (run["res"] / "inpaint" / m / it["bin"] / f"shard_{it['pos'] // SHARD}" / f"{it['id']}.png").resolve()
            assert it["values"][r][0] == pytest.approx(truth.loc[(m, it["bin"], it["id"]), "psnr"])
        for key in ("gt", "structure", "mask"):
            assert (run["out"].parent / it["links"][key]).is_file()
    assert [m["key"] for m in data["metrics"]] == ["psnr", "ssim", "l1"]  # LPIPS n/a: no column
    html = run["out"].read_text()
    assert "http://" not in html and "https://" not in html and "data:image/jpeg;base64," in html
    with Image.open(__import__("io").BytesIO(__import__("base64").b64decode(
            data["items"][0]["thumbs"]["gt"].split(",", 1)[1]))) as im:
        assert im.format == "JPEG" and max(im.size) == 16


def test_explorer_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    run = make_run(tmp_path, n=4)
    run["per_image"][0].unlink()
    with pytest.raises(UserError, match=r"per_image\.csv: per-image metrics not found; run the metrics stage"):
        build(run, monkeypatch)
    assert not run["out"].parent.exists()
    res = subprocess.run([sys.executable, "-m", "strdiffusion", "explorer", "--pairs", "results/toy/masks/pairs.csv",
                          "--gt-dir", "results/toy/data/test", "--structure-dir", "results/toy/structure/test",
                          "--inpaint-dir", "results/toy/inpaint", "--per-image", "nothing.csv", "--methods",
                          ",".join(METHODS), "--bins", ",".join(BINS), "--method", "irsde", "--out", "x.html"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert res.stderr.startswith("error: --method 'irsde' (config key 'explorer.method') is not a row")


# ---- in the browser


def chrome():
    """Debian's headless Chromium under Selenium, with its console log kept; a fresh profile, no network chatter."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMEDRIVER, shutil.which("chromium") or "/usr/bin/chromium") if not Path(p).is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver), as .ci/run does")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="explorer-chromium-")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={profile}",
                "--window-size=1400,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.profile_dir = profile
    return driver


@pytest.fixture()
def browser():
    driver = chrome()
    yield driver
    driver.quit()
    shutil.rmtree(driver.profile_dir, ignore_errors=True)


def visible(driver) -> list[tuple[str, str]]:
    from selenium.webdriver.common.by import By

    return [(e.get_attribute("data-bin"), e.get_attribute("data-id"))
            for e in driver.find_elements(By.CSS_SELECTOR, "section.item") if e.is_displayed()]


def choose(driver, control: str, value: str) -> None:
    from selenium.webdriver.support.select import Select

    Select(driver.find_element("id", control)).select_by_value(value)


def severe(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_explorer_page_in_headless_chromium_filters_sorts_and_keeps_the_view(tmp_path, monkeypatch, browser):
    run = make_run(tmp_path, n=6)
    build(run, monkeypatch, per_group=2)
    truth = per_image(run)
    pairs = pd.read_csv(run["res"] / "masks/pairs.csv", dtype=str)
    browser.get(run["out"].as_uri())
    assert visible(browser) == [(r.bin, r.image_id) for r in pairs.itertuples()]  # every pair, bin then pair order
    choose(browser, "bin", "30-40")
    psnr = truth[(truth.method == "strdiffusion") & (truth.bin == "30-40")].set_index("image_id").psnr
    assert visible(browser) == [("30-40", i) for i in pairs[pairs.bin == "30-40"].image_id]
    choose(browser, "sort", "psnr")
    assert visible(browser) == [("30-40", i) for i in psnr.sort_values().index]
    choose(browser, "order", "desc")
    assert visible(browser) == [("30-40", i) for i in psnr.sort_values(ascending=False).index]
    # where structure helps: StrDiffusion minus Telea
    telea = truth[(truth.method == "telea") & (truth.bin == "30-40")].set_index("image_id").psnr
    choose(browser, "minus", "telea")
    assert visible(browser) == [("30-40", i) for i in (psnr - telea).sort_values(ascending=False).index]
    browser.find_element("id", "row-mean_fill").click()
    assert not browser.find_element("css selector", "figure[data-row=mean_fill]").is_displayed()
    # the view is in the fragment: a fresh load of the address shows it again
    url = browser.current_url
    assert "bin=30-40" in url and "sort=psnr" in url and "minus=telea" in url and "rows=telea%2Cstrdiffusion" in url
    browser.get("about:blank")
    browser.get(url)
    assert visible(browser) == [("30-40", i) for i in (psnr - telea).sort_values(ascending=False).index]
    assert browser.find_element("id", "minus").get_attribute("value") == "telea"
    # enlarge a fill: its full image loads from the run's files; the hole outline toggles
    first = next(e for e in browser.find_elements("css selector", "section.item") if e.is_displayed())
    first.find_element("css selector", "figure[data-row=strdiffusion] a").click()
    image = browser.find_element("id", "viewer-image")
    assert browser.find_element("id", "viewer").is_displayed()
    shown = visible(browser)[0][1]
    shard = pairs[pairs.bin == "30-40"].image_id.tolist().index(shown) // SHARD
    assert image.get_attribute("src").endswith(f"/results/toy/inpaint/strdiffusion/30-40/shard_{shard}/{shown}.png")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) == 24
    assert not browser.find_element("id", "viewer-outline").is_displayed()
    browser.find_element("id", "viewer-outline-toggle").click()
    assert browser.find_element("id", "viewer-outline").is_displayed() and "outline=1" in browser.current_url
    assert severe(browser) == []


@pytest.mark.slow
@pytest.mark.xdist_group("workflow")  # one worker makes the shared run
def test_explorer_of_the_tiny_workflow_run_shows_every_pair_in_chromium(classical_run, browser):
    work, _ = classical_run
    page = work / "results/builtin/explorer/index.html"
    pairs = pd.read_csv(work / "results/builtin/masks/pairs.csv", dtype=str)
    browser.get(page.as_uri())
    assert sorted(visible(browser)) == sorted((r.bin, r.image_id) for r in pairs.itertuples())
    assert len(browser.find_elements("css selector", "figure[data-row]")) == 7 * len(pairs)
    loaded = browser.execute_script("return [...document.images].filter(i => i.src && i.complete && "
                                    "i.naturalWidth === 0).length")
    assert loaded == 0
    assert severe(browser) == []


def screenshot(page: str, out: str, view: str = "") -> None:
    """A screenshot of ``page`` in the test browser at the view ``view`` (a fragment such as
    ``bin=40-50&sort=psnr&minus=irsde``), its first rows on screen; refused when the page logged an error."""
    driver = chrome()
    try:
        driver.get(Path(page).resolve().as_uri() + (f"#{view.lstrip('#')}" if view else ""))
        errors = severe(driver)
        if errors:
            raise SystemExit(f"error: {page}: the page logged errors: {errors}")
        driver.save_screenshot(out)
    finally:
        driver.quit()
        shutil.rmtree(driver.profile_dir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        raise SystemExit("usage: python tests/test_explorer.py PAGE.html OUT.png [VIEW, e.g. bin=40-50&sort=psnr]")
    screenshot(*sys.argv[1:])
