"""Benchmarks of the networks, samplers, trainer, metrics and workflow: ``python -m benchmarks --help``.

Every measurement is repeated; the JSON keeps median, min and max seconds and the load average
(``os.getloadavg()``) before and after, because other jobs share the machine. Networks have random
weights (speed does not depend on the values, except the sampler's accept/reject decisions, which
change how many trials run: calls per image are reported beside every sampler rate).

Sections (``--only``): env (the machine, always measured) and the modules of :data:`SECTIONS`, each
with a ``TITLE`` and ``run(args, result)``; those in :data:`OFF_BY_DEFAULT` run only with ``--all`` or
when named, those in :data:`ONLY_WHEN_NAMED` (the Places2-size rehearsal) only when named. Targets are printed beside the measurements; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from . import common, forward, metrics, ownimage, sampler, scale, train, workflow
from .common import CONFIGS, PEAK, REPO, TARGETS, calibrate_matmul, describe, env_info, loadavg

# section name -> its module, in the order they run
SECTIONS = {"forward": forward, "sampler": sampler, "train": train, "metrics": metrics, "ownimage": ownimage,
            "workflow": workflow, "scale": scale}
OFF_BY_DEFAULT = {"ownimage", "workflow", "scale"}
ONLY_WHEN_NAMED = {"scale"}  # hours on a laptop: --all leaves it out
NAMES = ("env", *SECTIONS)


def summary(result: dict) -> dict:
    """The measurements the targets are about, beside the targets."""
    out = {}
    for row in result.get("forward", []):
        if row["net"] in ("texture", "structure") and row["config"] == "paper" and row["px"] == 256 \
                and row["batch"] == 1 and "skipped" not in row and common.DEVICE.type == "cpu":
            out[f"paper_{row['net']}_unet_256_{row['format']}_fraction_of_peak"] = {
                "measured": row["fraction_of_peak"], "target": TARGETS["paper_unet_256_fraction_of_peak"],
                "reference": 0.61, "seconds_per_forward": row["min_s"], "gflop": row["gflop"],
                # the conv efficiency net of other jobs' load: against a matmul timed in the same run
                "fraction_of_matmul_now": row["gflops_best"] / result["matmul_calibration"]["gflops_best"]}
    for row in result.get("sampler", []):
        if "speedup_vs_reference_order" in row:
            out[f"sampler_speedup_{row['config']}_{row['px']}px_T{row['T']}_B{row['batch']}_{row['format']}"] = {
                "measured": row["speedup_vs_reference_order"],
                "target": TARGETS["sampler_speedup_vs_reference_order"],
                "bit_identical": row["identical_to_reference_order"],
                "max_abs_diff": row["max_abs_diff_vs_reference_order"],
                "max_abs_diff_target": TARGETS["sampler_max_abs_diff"]}
    for row in result.get("ownimage", []):
        name = f"own_image_{row['width']}x{row['height']}"
        out[f"{name}_seconds"] = {"measured": row["seconds"], "target": TARGETS["own_image_seconds"]}
        out[f"{name}_peak_rss_mb"] = {"measured": row["peak_rss_mb"], "target": TARGETS["own_image_peak_mb"]}
    if "workflow" in result:
        out["workflow_seconds"] = {"measured": result["workflow"]["seconds"], "target": TARGETS["workflow_seconds"]}
    gpu = {r["precision"]: r for r in result.get("sampler", []) if r.get("precision") and r["px"] == 256}
    out["h100_paper_T100_seconds_per_256px_image"] = {
        "measured": gpu["fp32"]["seconds_per_image"] if "fp32" in gpu else None,
        "target": TARGETS["h100_paper_T100_seconds_per_256px_image"],
        **({"device": result["env"].get("gpu"), "by_precision": {p: r["seconds_per_image"] for p, r in gpu.items()},
            "batch": gpu["fp32"]["batch"]} if gpu else
           {"note": "not measurable: no GPU on this machine" if common.DEVICE.type == "cpu" else "not run"})}
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small grid, few repeats (a few minutes)")
    p.add_argument("--all", action="store_true", help="every section but the rehearsal (--only scale), the workflow included (slow)")
    p.add_argument("--only", default="", help=f"comma-separated sections of {', '.join(NAMES)}")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/out/latest.json", help="JSON results")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--sampler-T", type=int, default=0,
                   help="T of the tiny-config sampler runs (default: the tiny preset's, config/config.yaml)")
    p.add_argument("--sampler-batch", type=int, default=0,
                   help="images per tiny-config sampler run (default: the preset's sampling.batch_size)")
    p.add_argument("--paper-sampler-T", type=int, default=10,
                   help="T of the paper-config sampler run at 64 px (0 = skip); reduced from 100 for CPU time")
    p.add_argument("--forward-combos", default="",
                   help="only these forward combos, e.g. tiny:64:1,paper:256:1 (config:px:batch)")
    p.add_argument("--workflow-timeout", type=int, default=3600)
    p.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda | cuda:N")
    p.add_argument("--gpu-batch", type=int, default=8, help="images per batch of the CUDA paper-config sampler runs")
    scale.add_arguments(p)
    a = p.parse_args(argv)
    default = [name for name in NAMES if name not in OFF_BY_DEFAULT or (a.all and name not in ONLY_WHEN_NAMED)]
    sections = [s.strip() for s in a.only.split(",") if s.strip()] or default
    unknown = [s for s in sections if s not in NAMES]
    if unknown:
        p.error(f"unknown sections {unknown}; choose from {', '.join(NAMES)}")
    a.sections = sections
    return a


def start(a) -> dict:
    """The run's header: the machine, the configurations and the fp32 matmul rate measured now."""
    from strdiffusion.runtime.precision import configure

    # the workflow's default numerics (tf32 false: no TF32 in cuDNN either); the precision rows switch TF32 on
    result = {"env": env_info(), "targets": TARGETS, "quick": a.quick, "sections": a.sections,
              "precision": configure(tf32=False, deterministic=False)}
    print(f"== environment: {result['env']['cpu']}, {result['env']['cpu_count']} cores, torch "
          f"{result['env']['torch']} ({result['env']['torch_threads']} threads, OMP_WAIT_POLICY="
          f"{result['env']['omp_wait_policy']}), python {result['env']['python']}, CUDA: {result['env']['cuda']},"
          f" load {result['env']['loadavg']}", flush=True)
    result["configs"] = CONFIGS
    for name in CONFIGS:
        print(f"  {name}: {describe(name)}", flush=True)
    result["device"] = str(common.DEVICE)
    result["matmul_calibration"] = cal = calibrate_matmul()
    if common.DEVICE.type == "cuda":  # no assumed peak: % of the fp32 (non-TF32) matmul measured now
        PEAK.update(gflops=cal["gflops_best"], what=f"fp32 matmul {cal['n']}^3 measured at start")
    result["peak"] = dict(PEAK)
    print(f"  fp32 matmul {cal['n']}^3 on {common.DEVICE} now: {cal['gflops_best']:.1f} GFLOP/s best"
          f" (% of peak below: of {PEAK['gflops']:.0f} GFLOP/s, {PEAK['what']})", flush=True)
    return result


def main(argv=None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.device == "auto":
        common.DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        common.DEVICE = torch.device(a.device)
        if common.DEVICE.type == "cuda" and not torch.cuda.is_available():
            print(f"error: --device {a.device}: no CUDA device is available; use --device cpu", file=sys.stderr)
            return 2
    result = start(a)

    def save():
        result["summary"] = summary(result)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str))
        tmp.replace(a.out)

    for name, section in SECTIONS.items():
        if name in a.sections:
            print(f"== {section.TITLE}", flush=True)
            section.run(a, result)
            save()
    result["env"]["loadavg_end"] = loadavg()
    save()
    print("== targets (never asserted)")
    for name, s in result["summary"].items():
        measured = "n/a" if s["measured"] is None else f"{s['measured']:.3g}"
        extra = {k: v for k, v in s.items() if k not in ("measured", "target")}
        print(f"  {name}: {measured} vs target {s['target']:g}  {extra}")
    print(f"wrote {a.out}")
    return 0
