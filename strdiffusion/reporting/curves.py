"""Learning-curves figure: each network's training loss and validation score against iterations.

Inputs are (net, path) pairs (``NET=PATH`` on the command line): the path is a curve CSV written by the
trainer (``results/<dataset>/curves/<net>.csv``) or a checkpoint (``.pt``) whose metadata carries its training
run's curve (the trainer stores it there; given checkpoints such as the shipped ones are plotted from it). A network
may be given twice, a CSV and a checkpoint: its panel then shows both runs (the checkpoint's dashed).
Output: one PNG with a panel per network (and a PDF beside it), written atomically.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from strdiffusion.io.errors import UserError
from strdiffusion.io.files import atomic_path

log = logging.getLogger("strdiffusion.reporting.curves")

# the validation column plotted per network kind, with its axis label
SCORE = {"critic": ("auc", "validation AUC (real vs fake)"), None: ("hole_psnr", "validation hole PSNR (dB)")}


def load_curve(path: Path) -> pd.DataFrame:
    """A learning curve from a trainer CSV or from a checkpoint's metadata."""
    if not path.is_file():
        raise UserError(f"{path}: no such learning curve or checkpoint; run the training stage first")
    if path.suffix == ".pt":
        import torch

        meta = torch.load(path, map_location="cpu", weights_only=True)
        if "curve" not in meta:
            raise UserError(f"{path}: the checkpoint carries no learning curve (trained before curves existed, "
                            f"or not by this trainer)")
        return pd.DataFrame(meta["curve"])
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a learning-curve CSV ({exc})") from None


def plot(curves: dict[str, list[tuple[pd.DataFrame, str]]], out_png: Path) -> None:
    """``curves``: net -> [(curve, source label), ...]. One panel per network: loss (log) and score;
    a second source of the same network is drawn dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(curves))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.3), squeeze=False)
    for ax, (net, runs) in zip(axes[0], curves.items()):
        column, label = SCORE.get(net, SCORE[None])
        ax2 = ax.twinx() if any(column in df for df, _ in runs) else None
        titles, positive = [], True
        for style, (df, source) in zip(("-", "--"), runs):
            trained = df[df["loss"].notna()]
            positive = positive and bool(len(trained)) and bool((trained["loss"] > 0).all())
            ax.plot(trained["iteration"], trained["loss"], color="0.4", ls=style, lw=1.2, label=f"loss, {source}")
            if column in df:
                ax2.plot(df["iteration"], df[column], color="C0", ls=style, marker="o", ms=3, lw=1.5,
                         label=f"{label.split(' (')[0]}, {source}")
            minutes = float(df["seconds"].max()) / 60 if "seconds" in df and len(df) else 0.0
            titles.append(f"{source}, {minutes:.1f} min")
        if net != "critic" and positive:
            ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss (mean since last point)")
        if ax2 is not None:
            ax2.set_ylabel(label, color="C0")
            if net == "critic":
                ax2.axhline(0.5, color="C0", ls=":", lw=1)
            if len(runs) > 1:
                ax2.legend(fontsize=6, loc="lower right")
        ax.set_title(f"{net} ({'; '.join(titles)})", fontsize=8)
    fig.tight_layout()
    for path in (out_png, out_png.with_suffix(".pdf")):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=120)
    plt.close(fig)


def from_inputs(inputs, out) -> None:
    """The figure of ``inputs`` (``(net, path)`` pairs: curve CSVs of this run, checkpoints) written to ``out``."""
    curves = {}
    for net, path in inputs:
        path = Path(path)
        source = "checkpoint metadata" if path.suffix == ".pt" else "this run"
        runs = curves.setdefault(net, [])
        if any(src == source for _, src in runs):  # at most one CSV and one checkpoint
            raise UserError(f"--inputs names {net} twice from the same kind of source ({path}); give at most "
                            f"one curve CSV and one checkpoint per network")
        runs.append((load_curve(path), source))
    for runs in curves.values():
        runs.sort(key=lambda run: run[1] != "this run")  # this run solid, the checkpoint dashed
    plot(curves, out)
    log.info("wrote %s", out)
