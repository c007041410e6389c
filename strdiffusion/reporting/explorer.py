"""The results explorer: one static page per data set for looking at single test images.

``results/<dataset>/explorer/index.html`` opens from the file system with a double click: its script, style, data
and thumbnails are inside the file (nothing is fetched from the network, no server), so the Snakemake report can
carry it too. Each shown test image has its masked input, structure map, every row's fill and the ground truth,
with the per-image metrics beneath; a thumbnail links to the full image of the run by a relative path.

Which images: per bin, the ``per_group`` worst, best and median test images of one row by one per-image metric
(ties broken by pair order), and ``per_group`` drawn at random (seeded) from the others; a bin of at most
4 x ``per_group`` pairs is shown whole. The per-image metrics and the pairs are read once; the thumbnails, the
page and the time to make them grow with the selection, not with the test set.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from strdiffusion.core.seeds import seed_for
from strdiffusion.reporting.figures import _find_output
from strdiffusion.settings.jobs import ExplorerSettings
from strdiffusion.reporting.tables import METHOD_NAMES, METRICS, PER_IMAGE, PSNR_CAP
from strdiffusion.io.errors import UserError
from strdiffusion.io.images import read_image_rgb, read_mask
from strdiffusion.io.files import write_text_atomic

log = logging.getLogger("strdiffusion.explorer")

GROUPS = ("worst", "best", "median", "random")
HOLE_GREY = (128, 128, 128)  # the masked input's hole colour, as in the qualitative figure
OUTLINE = (255, 214, 0)


# ---- reading and choosing --------------------------------------------------------------------------------------


def read_per_image(files) -> pd.DataFrame:
    """Every row's per-image metrics of every bin, in one frame (each file read once)."""
    frames = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise UserError(f"{path}: per-image metrics not found; run the metrics stage first")
        frame = pd.read_csv(path, dtype={"bin": str, "image_id": str, "method": str})
        missing = [c for c in ("method", "bin", "image_id") if c not in frame.columns]
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected a per-image metrics CSV of "
                            "the metrics stage")
        frames.append(frame)
    if not frames:
        raise UserError("--per-image: no per-image metrics files given")
    return pd.concat(frames, ignore_index=True)


def read_pairs(path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: pairs file not found; run the masks stage first")
    pairs = pd.read_csv(path, dtype={"bin": str, "image_id": str})
    missing = [c for c in ("image_id", "bin", "mask") if c not in pairs.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected image_id, bin, mask")
    return pairs


def ranking_row(s: ExplorerSettings) -> str:
    """The row whose metric ranks the images: the configured one, else StrDiffusion when it is a row, else the first."""
    return s.method or ("strdiffusion" if "strdiffusion" in s.methods else s.methods[0])


def select_bin(values: np.ndarray, higher_is_better: bool, per_group: int, seed: int) -> dict[int, list[str]]:
    """Positions (pair order) of one bin's shown images -> their groups. ``values``: the ranking metric of each
    pair, NaN where the row has none (such a pair is never ranked, only drawn). The random draw makes the
    selection up to 4 x ``per_group`` (more than ``per_group`` only where fewer pairs could be ranked). All pairs,
    without groups, when there are at most 4 x ``per_group``."""
    n = len(values)
    if n <= 4 * per_group:
        return {p: [] for p in range(n)}
    score = np.where(np.isnan(values), np.nan, values if higher_is_better else -values)
    ranked = [int(p) for p in np.lexsort((np.arange(n), score)) if not np.isnan(score[p])]  # worst first
    centre = max(0, len(ranked) // 2 - per_group // 2)
    chosen = {"worst": ranked[:per_group], "best": ranked[::-1][:per_group],
              "median": ranked[centre:centre + per_group]}
    groups: dict[int, list[str]] = {}
    for name, positions in chosen.items():
        for p in positions:
            groups.setdefault(p, []).append(name)
    rest = np.array([p for p in range(n) if p not in groups], dtype=np.int64)
    size = min(4 * per_group - len(groups), len(rest))
    drawn = np.random.default_rng(seed).choice(rest, size=size, replace=False) if size > 0 else []
    for p in drawn:
        groups[int(p)] = ["random"]
    return dict(sorted(groups.items()))


def selection(pairs: pd.DataFrame, per_image: pd.DataFrame, s: ExplorerSettings) -> list[dict]:
    """The shown test images of every bin, in bin then pair order: bin, image id, position in the bin's pairs,
    mask file and groups."""
    row, metric = ranking_row(s), s.metric
    ranked_by = per_image[per_image["method"] == row].set_index(["bin", "image_id"])
    ranked_by = ranked_by[metric].astype(float) if metric in ranked_by.columns else pd.Series(np.nan, ranked_by.index)
    if ranked_by.isna().all():  # a metric left out of metrics.per_image, or LPIPS without its weights
        log.warning("explorer: %s has no %s values; the shown images are drawn at random", row, metric)
    items = []
    for b in s.bins:
        in_bin = pairs[pairs["bin"] == b].reset_index(drop=True)
        values = ranked_by.reindex(pd.MultiIndex.from_arrays([[b] * len(in_bin), in_bin["image_id"]])).to_numpy()
        picked = select_bin(values, METRICS[metric][1], s.per_group, seed_for(s.seed, "explorer", b))
        items += [{"bin": b, "id": in_bin.at[p, "image_id"], "pos": p, "mask": in_bin.at[p, "mask"], "groups": g}
                  for p, g in picked.items()]
    return items


def metric_values(per_image: pd.DataFrame, items: list[dict], methods, metrics) -> list[list[list[float | None]]]:
    """For each item, each row's values of ``metrics`` (None where there is none); PSNR capped as in the tables."""
    keys = pd.MultiIndex.from_tuples([(m, it["bin"], it["id"]) for it in items for m in methods])
    table = per_image.drop_duplicates(["method", "bin", "image_id"]).set_index(["method", "bin", "image_id"])
    table = table.reindex(keys)[list(metrics)].astype(float)
    if "psnr" in metrics:
        table["psnr"] = table["psnr"].clip(upper=PSNR_CAP)
    flat = [[None if math.isnan(v) else round(v, 6) for v in rec] for rec in table.itertuples(index=False)]
    return [flat[i * len(methods):(i + 1) * len(methods)] for i in range(len(items))]


# ---- images ---------------------------------------------------------------------------------------------------


def _encode(array: np.ndarray, longest: int) -> str:
    """A thumbnail of ``array`` (no side over ``longest`` px, never enlarged) as a JPEG data URI."""
    from PIL import Image

    im = Image.fromarray(array)
    im.thumbnail((longest, longest), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _overlay(where: np.ndarray, colour) -> str:
    """A full-size PNG data URI: ``colour`` where ``where``, transparent elsewhere (two palette entries)."""
    from PIL import Image

    im = Image.fromarray(where.astype(np.uint8), mode="L").convert("P")
    im.putpalette([0, 0, 0, *colour])
    buf = io.BytesIO()
    im.save(buf, format="PNG", transparency=0, optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def outline(hole: np.ndarray) -> np.ndarray:
    """The hole's pixels that touch a known pixel (4-neighbours; the image border counts as known)."""
    padded = np.pad(hole, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return hole & ~inner


def _output(inpaint_dir: Path, method: str, item: dict, shard_size: int) -> Path | None:
    """A row's output of one shown image: in its shard (found from the pair's position), or imported."""
    folder = inpaint_dir / method / item["bin"]
    direct = folder / f"shard_{item['pos'] // shard_size}" / f"{item['id']}.png"
    return direct if direct.is_file() else _find_output(folder, item["id"])


def _link(path: Path | None, page_dir: Path) -> str | None:
    return None if path is None else Path(os.path.relpath(path, page_dir)).as_posix()


def item_images(item: dict, dirs: dict, methods, s: ExplorerSettings, page_dir: Path) -> dict:
    """Thumbnails (data URIs), overlays and links of one shown test image."""
    gt_path = dirs["gt"] / f"{item['id']}.png"
    if not gt_path.is_file():
        raise UserError(f"{gt_path}: test image not found for image id '{item['id']}'; run the data stage first")
    gt = read_image_rgb(gt_path)
    known = read_mask(item["mask"], size=gt.shape[:2])
    hole = known < 0.5
    masked = np.where(hole[..., None], np.array(HOLE_GREY, np.uint8), gt)
    edge_path = dirs["structure"] / "edge" / f"{item['id']}.png"
    edge_path = edge_path if edge_path.is_file() else None
    fills = [_output(dirs["inpaint"], m, item, s.shard_size) for m in methods]
    thumb = lambda path: None if path is None else _encode(read_image_rgb(path), s.thumbnail)  # noqa: E731
    return {"w": int(gt.shape[1]), "h": int(gt.shape[0]),
            "thumbs": {"input": _encode(masked, s.thumbnail), "structure": thumb(edge_path),
                       "gt": _encode(gt, s.thumbnail), "fills": [thumb(p) for p in fills]},
            "hole": _overlay(hole, HOLE_GREY), "outline": _overlay(outline(hole), OUTLINE),
            "links": {"gt": _link(gt_path, page_dir), "structure": _link(edge_path, page_dir),
                      "mask": _link(Path(item["mask"]), page_dir),
                      "fills": [_link(p, page_dir) for p in fills]}}


# ---- the page ---------------------------------------------------------------------------------------------------


def _asset(name: str) -> str:
    return resources.files("strdiffusion.reporting").joinpath(name).read_text(encoding="utf-8")


def render_page(data: dict) -> str:
    """The page: the template with its style, script and data inline (every ``<`` of the JSON escaped, so that
    no text in it can end the script element)."""
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    title = html.escape(f"results explorer: {data['dataset']}")
    page = _asset("explorer_page.html").replace("<!--TITLE-->", title)
    return (page.replace("/*STYLE*/", _asset("explorer_page.css")).replace("/*SCRIPT*/", _asset("explorer_page.js"))
            .replace("/*DATA*/", payload))


def build_explorer(pairs_csv, gt_dir, structure_dir, inpaint_dir, per_image_files, out, s: ExplorerSettings,
                   dataset: str = "") -> dict:
    """Write the page ``out`` (atomically); returns its data (without thumbnails) for callers that check it."""
    out = Path(out)
    per_image, pairs = read_per_image(per_image_files), read_pairs(pairs_csv)
    methods = list(s.methods)
    unknown = sorted(set(per_image["method"]) - set(methods))
    if unknown:
        raise UserError(f"--per-image: rows {', '.join(unknown)} are not among --methods {','.join(methods)}; "
                        "give the metrics files of this run's rows")
    metrics = [m for m in PER_IMAGE if m in per_image.columns and per_image[m].notna().any()]
    items = selection(pairs, per_image, s)
    values = metric_values(per_image, items, methods, metrics)
    dirs = {"gt": Path(gt_dir), "structure": Path(structure_dir), "inpaint": Path(inpaint_dir)}
    names = {**METHOD_NAMES, **{m: e.name for m, e in s.external}}
    shown = []
    for it, vals in zip(items, values):
        shown.append({"bin": it["bin"], "id": it["id"], "pos": it["pos"], "groups": it["groups"], "values": vals,
                      **item_images(it, dirs, methods, s, out.parent)})
    counts = pairs.groupby("bin").size()
    data = {"dataset": dataset or out.parent.parent.name, "bins": list(s.bins),
            "pairs": {b: int(counts.get(b, 0)) for b in s.bins},
            "methods": [{"key": m, "name": names.get(m, m)} for m in methods],
            "metrics": [{"key": m, "label": METRICS[m][0], "higher": METRICS[m][1], "decimals": METRICS[m][2]}
                        for m in metrics],
            "ranking": {"method": ranking_row(s), "metric": s.metric, "per_group": s.per_group},
            "thumbnail": s.thumbnail,
            "groups": list(GROUPS), "items": shown}
    write_text_atomic(out, render_page(data))
    log.info("explorer: %d of %d test pairs -> %s (%.1f MB)", len(shown), len(pairs), out, out.stat().st_size / 1e6)
    return data
