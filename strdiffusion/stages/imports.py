"""``strdiffusion import``: an outside method's outputs of one bin, scored like the built-in rows
(:mod:`strdiffusion.inpainting.outside`)."""
from __future__ import annotations

import argparse

from strdiffusion.inpainting.outside import import_bin
from strdiffusion.settings.external import check_config
from strdiffusion.settings.jobs import ImportSettings

from .options import add_arguments, from_parsed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="strdiffusion import", description=(
        "Score an outside method's outputs like the built-in rows: check and composite one bin of them into "
        "OUT/<image_id>.png for the metric stage."))
    p.add_argument("--pairs", required=True, help="pairs CSV (image_id, bin, mask)")
    p.add_argument("--gt-dir", required=True, help="folder of the test images <image_id>.png")
    p.add_argument("--bin", required=True, help="hole-ratio bin label, e.g. 10-20")
    p.add_argument("--method", required=True, help="the row's name (in messages)")
    p.add_argument("--dataset", default="", help="fills {dataset} in --path")
    p.add_argument("--out", required=True, help="output folder of the composited outputs")
    p.add_argument("--root", help="folder the pairs CSV's relative mask paths start from (default: the folder that "
                                  "holds the run's results/ above --pairs, else the current folder)")
    add_arguments(p, ImportSettings)
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    s = from_parsed(ImportSettings, a)
    check_config({"external_methods": {a.method: {"path": s.path}}}, "--path")
    import_bin(a.pairs, a.gt_dir, a.bin, a.method, a.dataset, s, a.out, a.root)
    return 0
