"""``strdiffusion curves``: the learning-curves figure of the trained networks (:mod:`strdiffusion.reporting.curves`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from strdiffusion.io.errors import UserError
from strdiffusion.reporting import curves as lib


def _input(text: str) -> tuple[str, str]:
    net, sep, path = text.partition("=")
    if not sep or not net or not path:
        raise UserError(f"--inputs item {text!r} is not NET=PATH")
    return net, path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="strdiffusion curves", description=lib.__doc__.splitlines()[0])
    p.add_argument("--inputs", nargs="+", required=True, metavar="NET=PATH",
                   help="curve CSVs or checkpoints, e.g. structure=results/x/curves/structure.csv")
    p.add_argument("--out", required=True, type=Path, help="output PNG (a PDF is written beside it)")
    a = p.parse_args(argv)
    lib.from_inputs([_input(item) for item in a.inputs], a.out)
    return 0
