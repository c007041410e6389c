"""``strdiffusion masks``: generate or import hole masks per hole-ratio bin, build a training pool, pair them
with test images (:mod:`strdiffusion.masks.build`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from strdiffusion.io.files import write_csv_atomic
from strdiffusion.masks import build as lib
from strdiffusion.settings.jobs import MaskSettings, PairSettings, PoolSettings

from .options import add_arguments, from_parsed


def build_parser() -> argparse.ArgumentParser:
    """The subcommands; their options are the fields of MaskSettings, PoolSettings and PairSettings."""
    p = argparse.ArgumentParser(prog="strdiffusion masks", description=lib.__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="masks per hole-ratio bin: OUT/<bin>/<k:04d>.png + OUT/stats.csv")
    g.add_argument("--out", required=True, help="output folder (replaced atomically)")
    add_arguments(g, MaskSettings)
    q = sub.add_parser("pool", help="training masks of mixed hole ratios: OUT/<k:05d>.png + OUT/stats.csv")
    q.add_argument("--out", required=True, help="output folder (replaced atomically)")
    add_arguments(q, PoolSettings)
    r = sub.add_parser("pairs", help="pair test images with masks: CSV image_id, bin, mask, hole_ratio")
    r.add_argument("--manifest", required=True, help="data manifest CSV (columns id, split, ...); split == test used")
    r.add_argument("--masks", required=True, help="folder written by `masks generate`")
    r.add_argument("--out", required=True, help="pairs CSV")
    add_arguments(r, PairSettings)
    s = sub.add_parser("stats", help="measure existing mask folders into a stats CSV")
    s.add_argument("--masks", required=True)
    s.add_argument("--protocol", default="")
    s.add_argument("--out", required=True)
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.cmd == "generate":
        lib.run_generate(from_parsed(MaskSettings, a), Path(a.out))
    elif a.cmd == "pool":
        lib.run_pool(from_parsed(PoolSettings, a), Path(a.out))
    elif a.cmd == "pairs":
        lib.run_pairs(from_parsed(PairSettings, a), a.manifest, a.masks, a.out)
    else:
        write_csv_atomic(lib.measure(a.masks, a.protocol), a.out)
    return 0
