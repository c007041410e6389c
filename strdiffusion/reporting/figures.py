"""Figures: a qualitative grid and metric-vs-hole-ratio plots (PNG and PDF, matplotlib Agg).

Qualitative grid: for the first ``--per-bin`` test pairs of each bin (fixed: pair order is seeded),
one row each with the masked input (holes grey), the test structure (Canny edges), each method's
output (an outside method's imported output; blank where it was allowed to leave the image out) and the
ground truth.
"""
from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from strdiffusion.io.errors import UserError
from strdiffusion.io.files import atomic_path
from strdiffusion.io.images import read_image_rgb, read_mask
from strdiffusion.io.pairs import read_pairs
from strdiffusion.reporting.tables import METHOD_NAMES, METRICS, PER_IMAGE
from strdiffusion.settings.external import IMPORTED, missing_ids
from strdiffusion.settings.jobs import FigureSettings

log = logging.getLogger("strdiffusion.reporting.figures")


def _find_output(method_dir: Path, image_id: str) -> Path | None:
    """A row's output of one image: in an inpaint shard, or imported from an outside method (None when that
    method was allowed to leave the image out)."""
    hits = sorted(method_dir.glob(f"shard_*/{image_id}.png")) + sorted(method_dir.glob(f"{IMPORTED}/{image_id}.png"))
    if not hits:
        if image_id in missing_ids([method_dir / IMPORTED]):
            return None
        raise UserError(f"{method_dir}: no output for image '{image_id}'; run the inpainting stage first")
    return hits[0]


def _output_panel(method_dir: Path, image_id: str, shape) -> np.ndarray:
    path = _find_output(method_dir, image_id)
    return read_image_rgb(path) if path is not None else np.full(shape, 255, np.uint8)  # no output: blank


def _save(fig, out_png: Path):
    for path in (out_png, out_png.with_suffix(".pdf")):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=150, bbox_inches="tight")


def qualitative(pairs: pd.DataFrame, gt_dir: Path, structure_dir: Path, inpaint_dir: Path, methods, bins,
                per_bin: int, out_png: Path, names=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = pd.concat([pairs[pairs["bin"] == b].head(per_bin) for b in bins])
    names = {**METHOD_NAMES, **(names or {})}
    cols = ["Input", "Structure"] + [names.get(m, m) for m in methods] + ["Ground truth"]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.3 * len(cols), 1.3 * len(rows)), squeeze=False)
    for i, row in enumerate(rows.itertuples()):
        gt = read_image_rgb(gt_dir / f"{row.image_id}.png")
        mask = read_mask(row.mask, size=gt.shape[:2])[..., None]
        masked = (gt * mask + 128 * (1 - mask)).astype(np.uint8)
        edge_path = structure_dir / "edge" / f"{row.image_id}.png"
        edge = read_image_rgb(edge_path) if edge_path.is_file() else np.zeros_like(gt)
        panels = [masked, edge] + [_output_panel(inpaint_dir / m / row.bin, row.image_id, gt.shape)
                                   for m in methods] + [gt]
        for j, img in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(textwrap.fill(cols[j], 24), fontsize=6)  # long names wrap, not overlap
            if j == 0:
                ax.set_ylabel(f"{row.bin}%", fontsize=6)
    fig.tight_layout(pad=0.2)
    _save(fig, out_png)
    plt.close(fig)


def metric_curves(per_image_files, methods, bins, out_png: Path, names=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = [pd.read_csv(f, dtype={"bin": str, "image_id": str}) for f in per_image_files]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    metrics = [m for m in PER_IMAGE if m in df.columns and df[m].notna().any()]
    if not metrics:
        raise UserError("no per-image metric values to plot; run the metrics stage first")
    centres = [np.mean([int(v) for v in b.split("-")]) for b in bins]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 2.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for method in methods:
            sel = df[df.method == method]
            means = [sel[sel.bin == b][metric].astype(float).clip(upper=100).mean() for b in bins]
            ax.plot(centres, means, marker="o", label={**METHOD_NAMES, **(names or {})}.get(method, method))
        label, higher, _ = METRICS[metric]
        ax.set_xlabel("hole ratio (%)")
        ax.set_ylabel(f"{label} {'↑' if higher else '↓'}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    _save(fig, out_png)
    plt.close(fig)


def make_figures(pairs_csv, gt_dir, structure_dir, inpaint_dir, per_image, qualitative_png, curves_png,
                 s: FigureSettings) -> None:
    """The qualitative grid and the metric-vs-hole-ratio plot of ``s``'s methods and bins."""
    methods, bins = list(s.methods), list(s.bins)
    pairs = read_pairs(pairs_csv)
    names = {m: e.name for m, e in s.external}
    qualitative(pairs, Path(gt_dir), Path(structure_dir), Path(inpaint_dir), methods, bins, s.per_bin,
                Path(qualitative_png), names)
    metric_curves(per_image, methods, bins, Path(curves_png), names)
    log.info("figures -> %s, %s", qualitative_png, curves_png)
