"""Paper-style result tables: rows = methods, column groups = hole-ratio bins, columns = metrics.

Per-image metrics (PSNR, SSIM, L1, LPIPS) are averaged per (method, bin) with a 95 % percentile
bootstrap confidence interval; the diffusion rows' share of hole pixels outside [0, 1] before
clamping (``clipped``) is averaged too, and a footnote names every bin above 1 %; each method is compared with StrDiffusion by a paired bootstrap
test over the same images (two-sided p; † marks p < 0.05). Set metrics (FID, KID) come from the
per-set CSVs. A metric whose backend weights were missing shows "n/a" and a footnote saying what
to install where. Written as Markdown, LaTeX (booktabs) and a long-format CSV, each atomically.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from strdiffusion.core.seeds import seed_for
from strdiffusion.io.errors import UserError
from strdiffusion.io.files import status_path, write_csv_atomic, write_text_atomic
from strdiffusion.settings.jobs import TableSettings
from strdiffusion.settings.methods import DIFFUSION, FRESH
from strdiffusion.settings.values import OutsideMethod

log = logging.getLogger("strdiffusion.reporting.tables")

# name -> (label, higher is better, decimals)
METRICS = {
    "psnr": ("PSNR", True, 2),
    "ssim": ("SSIM", True, 3),
    "l1": ("L1", False, 4),
    "lpips": ("LPIPS", False, 3),
    "fid": ("FID", False, 2),
    "kid": ("KID", False, 4),
    "clipped": ("Clipped", False, 4),
}
PER_IMAGE = ("psnr", "ssim", "l1", "lpips")
METHOD_NAMES = {
    "mean_fill": "Mean-colour fill",
    "telea": "Telea (OpenCV)",
    "navier_stokes": "Navier-Stokes (OpenCV)",
    "biharmonic": "Biharmonic (scikit-image)",
    "strdiffusion": "StrDiffusion",
    "strdiffusion_noresample": "StrDiffusion w/o resampling",
    "irsde": "IR-SDE (no structure)",
}
METHOD_NAMES.update({method + FRESH: f"{METHOD_NAMES[method]} (trained in this run)" for method in DIFFUSION})
# Numbers published in the paper: StrDiffusion on Paris StreetView, NVIDIA masks.
REFERENCE_ROWS = {
    "paris_streetview": ("StrDiffusion (paper)", {
        "10-20": {"psnr": 33.17, "ssim": 0.960, "fid": 11.38},
        "20-30": {"psnr": 29.94, "ssim": 0.936, "fid": 22.04},
        "30-40": {"psnr": 27.63, "ssim": 0.899, "fid": 34.41},
        "40-50": {"psnr": 25.71, "ssim": 0.851, "fid": 44.31},
    }),
}
PSNR_CAP = 100.0  # dB; identical images have infinite PSNR
CLIP_WARN = 0.01  # a footnote when a diffusion row leaves more than 1 % of hole pixels outside [0, 1]
N_BOOT = 1000


def bootstrap_ci(values: np.ndarray, seed: int, n_boot: int = N_BOOT, level: float = 0.95) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_bootstrap_p(a: np.ndarray, b: np.ndarray, seed: int, n_boot: int = N_BOOT) -> float:
    """Two-sided bootstrap p-value for mean(a - b) == 0 over paired samples."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(diff) < 2:
        return math.nan
    if np.all(diff == 0):
        return 1.0
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    p = 2 * min((means <= 0).mean(), (means >= 0).mean())
    return float(min(1.0, max(p, 1.0 / n_boot)))


def _status(csv_path: Path) -> dict:
    """The metric stage's status sidecar of a metrics CSV ({} when there is none)."""
    path = status_path(csv_path)
    return json.loads(path.read_text()) if path.is_file() else {}


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: metrics file not found; run the metrics stage first")
    return pd.read_csv(path, dtype={"bin": str, "image_id": str})


def summarise(per_image_files, set_files, methods, bins, seed: int = 0):
    """Return (long DataFrame of results, {metric: reason} for unavailable metrics)."""
    per_image = pd.concat([_read_csv(Path(f)) for f in per_image_files], ignore_index=True) if per_image_files else pd.DataFrame()
    sets = pd.concat([_read_csv(Path(f)) for f in set_files], ignore_index=True) if set_files else pd.DataFrame()
    unavailable = {}
    for f in list(per_image_files) + list(set_files):
        for metric, st in _status(Path(f)).items():
            if isinstance(st, dict) and not st.get("available", True):
                unavailable[metric] = st.get("reason", "weights missing")
    rows = []
    for method in methods:
        for b in bins:
            sel = per_image[(per_image["method"] == method) & (per_image["bin"] == b)] if len(per_image) else per_image
            ref = per_image[(per_image["method"] == "strdiffusion") & (per_image["bin"] == b)] if len(per_image) else per_image
            for metric in PER_IMAGE:
                if metric not in sel.columns or sel.empty:
                    continue
                vals = sel.set_index("image_id")[metric].astype(float)
                if metric == "psnr":
                    vals = vals.clip(upper=PSNR_CAP)
                if vals.isna().all():
                    rows.append(dict(method=method, bin=b, metric=metric, value=math.nan, n=len(vals)))
                    continue
                vals = vals.dropna()
                lo, hi = bootstrap_ci(vals.to_numpy(), seed_for(seed, "ci", method, b, metric))
                p = math.nan
                if method != "strdiffusion" and not ref.empty and metric in ref.columns:
                    rv = ref.set_index("image_id")[metric].astype(float)
                    common = vals.index.intersection(rv.dropna().index)
                    if len(common) >= 2:
                        rvals = rv.loc[common].clip(upper=PSNR_CAP) if metric == "psnr" else rv.loc[common]
                        p = paired_bootstrap_p(vals.loc[common].to_numpy(), rvals.to_numpy(),
                                               seed_for(seed, "paired", method, b, metric))
                rows.append(dict(method=method, bin=b, metric=metric, value=float(vals.mean()), ci_low=lo,
                                 ci_high=hi, n=len(vals), p_vs_strdiffusion=p))
            if "clipped" in sel.columns and sel["clipped"].notna().any():
                rows.append(dict(method=method, bin=b, metric="clipped", value=float(sel["clipped"].mean()),
                                 n=int(sel["clipped"].notna().sum())))
            if len(sets):
                srow = sets[(sets["method"] == method) & (sets["bin"] == b)]
                if not srow.empty:
                    r = srow.iloc[0]
                    n = int(r.get("n_images", 0))
                    if "fid" in srow.columns:
                        rows.append(dict(method=method, bin=b, metric="fid", value=float(r["fid"]), n=n))
                    if "kid_mean" in srow.columns:
                        rows.append(dict(method=method, bin=b, metric="kid", value=float(r["kid_mean"]),
                                         ci_low=float(r["kid_mean"] - r.get("kid_std", math.nan)),
                                         ci_high=float(r["kid_mean"] + r.get("kid_std", math.nan)), n=n))
    cols = ["method", "bin", "metric", "value", "ci_low", "ci_high", "n", "p_vs_strdiffusion"]
    return pd.DataFrame(rows).reindex(columns=cols), unavailable


def _fmt(value, metric) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{METRICS[metric][2]}f}"


def _best(long: pd.DataFrame, metric: str, b: str):
    sel = long[(long.metric == metric) & (long.bin == b)].dropna(subset=["value"])
    if sel.empty:
        return None
    higher = METRICS[metric][1]
    return sel.value.max() if higher else sel.value.min()


def shown_columns(columns, long: pd.DataFrame, unavailable: dict, reference: str = "") -> list[str]:
    """The table's columns less those no metric file computed or marked unavailable: a metric left out of
    the config (``metrics.per_set: []``) has no column, one asked for without its weights is an n/a column
    with its footnote. With a published reference row every column stays (the paper's numbers fill it)."""
    if reference:
        return list(columns)
    computed = set(long["metric"]) if len(long) else set()
    return [c for c in columns if c in computed or c in unavailable]


def _tex_text(text: str) -> str:
    """A row name in LaTeX: the characters a user's display name may hold that LaTeX reads as commands."""
    for char in "&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text


def _image_count(long: pd.DataFrame, method: str, b: str) -> int:
    sel = long[(long.method == method) & (long.bin == b) & long.metric.isin(PER_IMAGE)] if len(long) else long
    return int(sel.n.max()) if len(sel) and sel.n.notna().any() else 0


def row_labels(long: pd.DataFrame, methods, bins, external: dict[str, OutsideMethod]) -> dict[str, str]:
    """Each row's name; an outside row scored on the images it has (allow_partial) shows its image count per
    bin against the most any row has there."""
    names = {**METHOD_NAMES, **{m: e.name for m, e in external.items()}}
    labels = {}
    for method in methods:
        labels[method] = names.get(method, method)
        if method in external and external[method].allow_partial:
            counts = [f"{_image_count(long, method, b)}/{max(_image_count(long, m, b) for m in methods)}" for b in bins]
            labels[method] += f" ({', '.join(counts)} images)"
    return labels


def external_footnote(external: dict[str, OutsideMethod], labels: dict) -> str:
    """How the outside rows were scored: composited (as every built-in row) or as delivered, resized or not."""
    def named(rows):
        return ", ".join(labels[m] for m in rows)

    composited = [m for m, e in external.items() if not e.as_is]
    as_is = [m for m, e in external.items() if e.as_is]
    parts = ([f"{named(composited)}: known pixels copied from the input before scoring, as for every built-in row"]
             if composited else [])
    parts += [f"{named(as_is)}: scored as delivered (known pixels not copied from the input)"] if as_is else []
    parts += [f"{labels[m]}: outputs resized ({e.resize}) to the test size" for m, e in external.items()
              if e.resize != "none"]
    return "Outside methods (config `external_methods:`), scored from their output files by the same metrics: " \
        + "; ".join(parts) + "."


def render(long: pd.DataFrame, unavailable: dict, methods, bins, columns, dataset: str,
           reference: str = "", given=(), external=None) -> tuple[str, str]:
    """Return (markdown, latex) for the paper-style table; ``given``: (net, path) of each network the plain
    diffusion rows sample from a given checkpoint (named in a footnote); ``external``: the outside rows'
    names and protocol ({method: :class:`~strdiffusion.settings.values.OutsideMethod`})."""
    external = {m: e for m, e in (external or {}).items() if m in methods}
    labels = row_labels(long, methods, bins, external)
    ref = REFERENCE_ROWS.get(reference)
    header = [f"{b}% {METRICS[m][0]}{'↑' if METRICS[m][1] else '↓'}" for b in bins for m in columns]
    md = [f"### {dataset}: inpainting results by hole ratio", "",
          "| Method | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    tex_rows = []
    footnotes = []
    for method in methods:
        cells, tcells = [], []
        for b in bins:
            for m in columns:
                r = long[(long.method == method) & (long.bin == b) & (long.metric == m)]
                value = float(r.value.iloc[0]) if len(r) else math.nan
                text = _fmt(value, m)
                best = _best(long, m, b)
                p = r.p_vs_strdiffusion.iloc[0] if len(r) and "p_vs_strdiffusion" in r else math.nan
                dagger = "†" if isinstance(p, float) and not math.isnan(p) and p < 0.05 else ""
                is_best = best is not None and not math.isnan(value) and value == best
                cells.append((f"**{text}**" if is_best else text) + dagger)
                ttext = text.replace("n/a", "--")
                tcells.append((f"\\textbf{{{ttext}}}" if is_best else ttext) + ("$^\\dagger$" if dagger else ""))
        name = labels[method]
        md.append(f"| {name} | " + " | ".join(cells) + " |")
        tex_rows.append(f"{_tex_text(name)} & " + " & ".join(tcells) + r" \\")
    if ref:
        name, numbers = ref
        cells = [_fmt(numbers.get(b, {}).get(m, math.nan), m) for b in bins for m in columns]
        md.append(f"| *{name}* | " + " | ".join(cells) + " |")
        tex_rows.append(r"\midrule" + "\n" + f"\\textit{{{name}}} & " + " & ".join(c.replace("n/a", "--") for c in cells) + r" \\")
        footnotes.append(f"*{name}*: numbers published by the authors (not computed here).")
    footnotes.append("Bold: best per column. †: differs from StrDiffusion (paired bootstrap over the same images, p < 0.05).")
    if given:
        files = ", ".join(f"{net} `{path}`" for net, path in given)
        footnotes.append(f"Diffusion rows without \"(trained in this run)\" sample given checkpoints (config "
                         f"`checkpoints:`), not networks trained by this run: {files}.")
    if external:
        footnotes.append(external_footnote(external, labels))
    ns = long[(long.metric == "fid") & long.value.notna()].n.dropna()
    if len(ns):
        count = f"{int(ns.min())}" if ns.min() == ns.max() else f"{int(ns.min())}–{int(ns.max())}"
        footnotes.append(f"FID: pytorch-fid 0.3.0 Inception features (2048-d pool3), {count} images per set; "
                         "below 2048 images the covariance is regularised, so compare FID only between rows of this table.")
    clipped = long[(long.metric == "clipped") & (long.value > CLIP_WARN)]
    for method in methods:
        worst = clipped[clipped.method == method]
        if len(worst):
            where = ", ".join(f"{100 * v:.1f} % in {b}" for b, v in zip(worst.bin, worst.value))
            footnotes.append(f"{labels[method]}: hole pixels outside [0, 1] before clamping "
                             f"({where}): the reverse process diverged, the network is under-trained.")
    for metric, reason in sorted(unavailable.items()):
        label = METRICS.get(metric, (metric.upper(),))[0]
        footnotes.append(reason if reason.startswith(f"{label} n/a") else f"{label} n/a: {reason}")
    md += [""] + [f"- {f}" for f in footnotes]
    # Confidence intervals
    md += ["", "95 % bootstrap confidence intervals (per-image metrics):", "",
           "| Method | Bin | " + " | ".join(METRICS[m][0] for m in PER_IMAGE) + " |", "|---|---|" + "---|" * len(PER_IMAGE)]
    for method in methods:
        for b in bins:
            cells = []
            for m in PER_IMAGE:
                r = long[(long.method == method) & (long.bin == b) & (long.metric == m)]
                if len(r) and not math.isnan(r.value.iloc[0]):
                    cells.append(f"{_fmt(r.value.iloc[0], m)} [{_fmt(r.ci_low.iloc[0], m)}, {_fmt(r.ci_high.iloc[0], m)}]")
                else:
                    cells.append("n/a")
            md.append(f"| {labels[method]} | {b} | " + " | ".join(cells) + " |")
    colspec = "l" + ("c" * len(columns)) * len(bins)
    groups = " & ".join(f"\\multicolumn{{{len(columns)}}}{{c}}{{{b}\\%}}" for b in bins)
    rules = " ".join(f"\\cmidrule(lr){{{2 + i * len(columns)}-{1 + (i + 1) * len(columns)}}}" for i in range(len(bins)))
    sub = " & ".join(f"{METRICS[m][0]}$\\{'uparrow' if METRICS[m][1] else 'downarrow'}$" for _ in bins for m in columns)
    tex = "\n".join([
        "% Generated by strdiffusion tables; requires \\usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
        f"\\caption{{Inpainting results on {dataset.replace('_', ' ')} by hole ratio.}}", f"\\begin{{tabular}}{{{colspec}}}",
        r"\toprule", f" & {groups} \\\\", rules, f"Method & {sub} \\\\", r"\midrule", *tex_rows, r"\bottomrule",
        r"\end{tabular}", r"\end{table}", ""])
    return "\n".join(md) + "\n", tex


def write_tables(per_image, sets, dataset: str, out: str, s: TableSettings) -> None:
    """The tables of ``s``'s methods, bins and columns: ``out``.md, ``out``.tex and ``out``.csv."""
    methods, bins, columns = list(s.methods), list(s.bins), list(s.columns)
    for c in columns:
        if c not in METRICS:
            raise UserError(f"unknown table column '{c}'; choose from {', '.join(METRICS)}")
    long, unavailable = summarise(per_image, sets, methods, bins, s.seed)
    columns = shown_columns(columns, long, unavailable, s.reference)
    md, tex = render(long, unavailable, methods, bins, columns, dataset, s.reference, s.given,
                     s.external.by_method())
    long.insert(0, "dataset", dataset)
    write_csv_atomic(long, out + ".csv")
    write_text_atomic(out + ".md", md)
    write_text_atomic(out + ".tex", tex)
    for metric, reason in unavailable.items():
        log.warning("%s n/a: %s", metric, reason)
    log.info("table for %s -> %s.{md,tex,csv}", dataset, out)
