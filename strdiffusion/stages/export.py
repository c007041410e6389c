"""``strdiffusion export``: the test pairs in other inpainting codes' layouts (:mod:`strdiffusion.masks.export`)."""
from __future__ import annotations

import argparse

from strdiffusion.masks import export as lib


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="strdiffusion export", description=lib.__doc__.splitlines()[0])
    p.add_argument("--pairs", required=True, help="pairs CSV (image_id, bin, mask)")
    p.add_argument("--gt-dir", required=True, help="folder of the test images <image_id>.png")
    p.add_argument("--out", required=True, help="output folder (lama/, keep_white/, plain/, manifest.csv)")
    p.add_argument("--root", help="folder the pairs CSV's relative mask paths start from (default: the folder that "
                                  "holds the run's results/ above --pairs, else the current folder)")
    a = p.parse_args(argv)
    lib.export_pairs(a.pairs, a.gt_dir, a.out, a.root)
    return 0
