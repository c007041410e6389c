"""``strdiffusion curves``: the learning-curves figure of the trained networks (:mod:`strdiffusion.reporting.curves`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from strdiffusion.reporting import curves as lib


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="strdiffusion curves", description=lib.__doc__.splitlines()[0])
    p.add_argument("--inputs", nargs="+", required=True, metavar="NET=PATH",
                   help="curve CSVs or checkpoints, e.g. structure=results/x/curves/structure.csv")
    p.add_argument("--out", required=True, type=Path, help="output PNG (a PDF is written beside it)")
    a = p.parse_args(argv)
    lib.from_inputs(a.inputs, a.out)
    return 0
