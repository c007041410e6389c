"""``strdiffusion docs``: regenerate (``--check``: compare) the measured tables of the documentation
(:mod:`strdiffusion.reporting.docs`)."""
from __future__ import annotations

import argparse

from strdiffusion.reporting import docs as lib


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="strdiffusion docs", description="Regenerate the generated blocks of README.md, "
                                "docs/*.md and checkpoints/laptop/README.md from docs/results/, config/*.yaml and the "
                                "shipped checkpoints.")
    p.add_argument("--root", default=".", help="the repository (default: the current folder)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each block that differs")
    p.add_argument("--count-jobs", metavar="CONFIG", action="append", default=[],
                   help="dry-run the workflow on CONFIG (over config/config.yaml) and record its job counts first")
    a = p.parse_args(argv)
    return lib.update(a.root, a.check, a.count_jobs)
