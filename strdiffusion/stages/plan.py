"""``strdiffusion plan``: jobs, peak memory, GPU-hours and disk of a config and profile (:mod:`strdiffusion.reporting.plan`)."""
from __future__ import annotations

import argparse

from strdiffusion.reporting import plan as lib


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="strdiffusion plan", description=lib.__doc__.splitlines()[0])
    p.add_argument("--configfile", nargs="*", default=[], help="config file(s) merged over config/config.yaml")
    p.add_argument("--profile", default="", help="profile folder whose config.yaml gives mem_mb and runtime")
    p.add_argument("--gpu-mem-gb", type=float, default=80.0, help="memory of one GPU (default 80)")
    p.add_argument("--benchmarks", default="", help="benchmarks JSON with measured rates "
                                                    "(default benchmarks/out/latest.json when present)")
    p.add_argument("--out", default="results/plan.csv", help="the table as CSV")
    a = p.parse_args(argv)
    lib.report(a.configfile, a.profile, a.gpu_mem_gb, a.benchmarks, a.out)
    return 0
