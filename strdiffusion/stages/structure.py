"""``strdiffusion structure``: grayscale and Canny edge maps of a folder of images (:mod:`strdiffusion.data.structure`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from strdiffusion.data import structure as lib
from strdiffusion.io.errors import UserError
from strdiffusion.settings.jobs import StructureSettings

from .options import add_arguments, from_parsed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="strdiffusion structure", description=lib.__doc__.splitlines()[0])
    p.add_argument("--images", required=True, help="folder of RGB PNGs")
    p.add_argument("--out", required=True, help="output folder (gray/, edge/)")
    add_arguments(p, StructureSettings)
    a = p.parse_args(argv)
    s = from_parsed(StructureSettings, a)
    if s.sigma <= 0:
        raise UserError(f"Canny sigma must be positive, got {s.sigma}; fix config key structure.sigma_*")
    lib.extract(Path(a.images), Path(a.out), s.sigma)
    return 0
