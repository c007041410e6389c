"""``strdiffusion tables``: paper-style tables in Markdown, LaTeX and CSV (:mod:`strdiffusion.reporting.tables`)."""
from __future__ import annotations

import argparse

from strdiffusion.reporting import tables as lib
from strdiffusion.settings.jobs import TableSettings

from .options import add_arguments, from_parsed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="strdiffusion tables", description=lib.__doc__.splitlines()[0])
    p.add_argument("--per-image", nargs="*", default=[], help="per-image metric CSVs")
    p.add_argument("--sets", nargs="*", default=[], help="per-set metric CSVs (FID, KID)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True, help="output prefix; writes PREFIX.md, PREFIX.tex, PREFIX.csv")
    add_arguments(p, TableSettings)
    a = p.parse_args(argv)
    lib.write_tables(a.per_image, a.sets, a.dataset, a.out, from_parsed(TableSettings, a))
    return 0
