"""``strdiffusion plan``: jobs, peak memory, GPU-hours and disk of a config and profile (:mod:`strdiffusion.reporting.plan`)."""
from __future__ import annotations

import argparse

from strdiffusion.reporting import plan as lib
from strdiffusion.reporting.accelerators import ACCELERATORS, DEFAULT_UTILIZATION


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="strdiffusion plan", description=lib.__doc__.splitlines()[0])
    p.add_argument("--configfile", nargs="*", default=[], help="config file(s) merged over config/config.yaml")
    p.add_argument("--profile", default="", help="profile folder whose config.yaml gives mem_mb and runtime")
    p.add_argument("--gpu", default="a100-80gb", choices=sorted(ACCELERATORS),
                   help="the GPU whose data-sheet rates time the network jobs (default a100-80gb)")
    p.add_argument("--tflops", type=float, help="the GPU's peak TFLOP/s instead of the data sheet's")
    p.add_argument("--bandwidth-tbs", type=float, help="the GPU's memory bandwidth in TB/s instead of the data sheet's")
    p.add_argument("--utilization", type=float, help=f"share of the peak the networks reach (default "
                                                     f"{DEFAULT_UTILIZATION:g}; docs/plan.md)")
    p.add_argument("--gpu-mem-gb", type=float, help="memory of one GPU (default: the GPU's)")
    p.add_argument("--benchmarks", default="", help="benchmarks JSON with rates measured on a GPU, which win over the "
                                                    "data sheet's (default benchmarks/out/latest.json when present)")
    p.add_argument("--out", default="results/plan.csv", help="the table as CSV")
    a = p.parse_args(argv)
    rates = lib.gpu_rates(a.gpu, a.tflops, a.bandwidth_tbs, a.utilization)
    mem = a.gpu_mem_gb if a.gpu_mem_gb is not None else ACCELERATORS[a.gpu].memory_gb
    lib.report(a.configfile, a.profile, mem, a.benchmarks, a.out, rates)
    return 0
