"""``strdiffusion explorer``: the results explorer's page of one data set (:mod:`strdiffusion.reporting.explorer`)."""
from __future__ import annotations

import argparse

from strdiffusion.reporting import explorer as lib
from strdiffusion.settings.jobs import ExplorerSettings

from .options import add_arguments, from_parsed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="strdiffusion explorer", description=lib.__doc__.splitlines()[0])
    p.add_argument("--pairs", required=True)
    p.add_argument("--gt-dir", required=True)
    p.add_argument("--structure-dir", required=True)
    p.add_argument("--inpaint-dir", required=True, help="results/<dataset>/inpaint")
    p.add_argument("--per-image", nargs="+", required=True, help="per-image metrics CSVs of every row and bin")
    p.add_argument("--dataset", default="", help="name shown on the page (default: the output's grandparent folder)")
    p.add_argument("--out", required=True, help="the page, e.g. results/<dataset>/explorer/index.html")
    add_arguments(p, ExplorerSettings)
    a = p.parse_args(argv)
    lib.build_explorer(a.pairs, a.gt_dir, a.structure_dir, a.inpaint_dir, a.per_image, a.out,
                       from_parsed(ExplorerSettings, a), a.dataset)
    return 0
