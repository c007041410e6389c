"""``strdiffusion figures``: qualitative grids and metric-vs-hole-ratio plots (:mod:`strdiffusion.reporting.figures`)."""
from __future__ import annotations

import argparse

from strdiffusion.reporting import figures as lib
from strdiffusion.settings.jobs import FigureSettings

from .options import add_arguments, from_parsed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="strdiffusion figures", description=lib.__doc__.splitlines()[0])
    p.add_argument("--pairs", required=True)
    p.add_argument("--gt-dir", required=True)
    p.add_argument("--structure-dir", required=True)
    p.add_argument("--inpaint-dir", required=True, help="results/<dataset>/inpaint")
    p.add_argument("--per-image", nargs="+", required=True)
    p.add_argument("--qualitative", required=True, help="output PNG (a PDF is written beside it)")
    p.add_argument("--curves", required=True, help="output PNG (a PDF is written beside it)")
    add_arguments(p, FigureSettings)
    a = p.parse_args(argv)
    lib.make_figures(a.pairs, a.gt_dir, a.structure_dir, a.inpaint_dir, a.per_image, a.qualitative, a.curves,
                     from_parsed(FigureSettings, a))
    return 0
