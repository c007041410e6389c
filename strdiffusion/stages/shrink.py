"""``strdiffusion shrink``: a trained checkpoint's weights as float16 (:mod:`strdiffusion.models.shrink`)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from strdiffusion.models import shrink as lib

log = logging.getLogger("strdiffusion.models.shrink")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="strdiffusion shrink", description=lib.__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="a checkpoint written by `strdiffusion train` (float32)")
    p.add_argument("dst", type=Path, help="output checkpoint (float16 weights, same metadata)")
    a = p.parse_args(argv)
    meta = lib.shrink(a.src, a.dst)
    log.info("wrote %s (%.2f MiB, from %.2f MiB; source sha256 %s)", a.dst, a.dst.stat().st_size / 2**20,
             a.src.stat().st_size / 2**20, meta["source_sha256"])
    return 0
