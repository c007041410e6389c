"""Forward time and GFLOP/s of the three networks at the tiny and paper sizes, in both memory formats
(section ``forward``; random weights: speed does not depend on the values)."""
from __future__ import annotations

import torch

from . import common

TITLE = "forward (inference, random weights)"


def bench_forward(quick: bool, combos: str = "") -> list[dict]:
    """Forward time and GFLOP/s; combos whose estimated time exceeds the budget are skipped.

    ``combos``: "config:px:batch,..." to measure only those (full-mode budgets). Every combo is
    measured in both memory formats (contiguous NCHW and channels_last).
    """
    kinds = ("texture", "structure", "critic")
    if combos:
        grid = [(c, int(px), int(b)) for c, px, b in (item.split(":") for item in combos.split(",") if item)]
        per_call_budget, combo_budget, max_repeats = 90.0, 120.0, 5
    elif quick:
        grid = [("tiny", 64, 1), ("tiny", 64, 16), ("paper", 64, 1)]
        per_call_budget, combo_budget, max_repeats = 5.0, 8.0, 3
    else:
        # every config x 64/128/256 px x batch 1/4/16; combos over the budget are listed as skipped
        grid = [(c, px, b) for c in ("tiny", "paper") for px in (64, 128, 256) for b in (1, 4, 16)]
        per_call_budget, combo_budget, max_repeats = 60.0, 60.0, 5
    rows, rate = [], {}
    for kind in kinds:
        for config in ("tiny", "paper"):
            nets = {fmt: common.inference_net(kind, config, fmt=fmt) for fmt in common.FORMATS}
            for (c, px, batch), fmt in ((combo, fmt) for combo in grid for fmt in common.FORMATS):
                if c != config:
                    continue
                net = nets[fmt]
                row = {"net": kind, "config": config, "px": px, "batch": batch, "format": fmt}
                row["gflop"] = common.flops_on_meta(kind, config, batch, px) / 1e9
                # estimate from the last measured rate of this net (conservatively 20 GFLOP/s at first)
                est = row["gflop"] / rate.get((kind, config), 20.0)
                if est > per_call_budget:
                    row["skipped"] = f"estimated {est:.0f} s per forward > budget {per_call_budget:.0f} s"
                    rows.append(row)
                    print_row_forward(row)
                    continue
                repeats = max(1, min(max_repeats, int(combo_budget / max(est, 1e-3)) - 1))
                warmup = 1 if est < 10 else 0
                with torch.inference_mode():
                    row.update(common.measure(common.forward_call(kind, net, batch, px, fmt=fmt), repeats, warmup))
                row["gflops"] = row["gflop"] / row["median_s"]
                row["gflops_best"] = row["gflop"] / row["min_s"]
                row["fraction_of_peak"] = row["gflops_best"] / common.PEAK["gflops"]
                rate[(kind, config)] = max(row["gflops"], 1.0)
                rows.append(row)
                print_row_forward(row)
    return rows


def print_row_forward(row: dict) -> None:
    head = (f"  {row['net']:9s} {row['config']:5s} {row['px']:4d}px b{row['batch']:<3d} {row['format']:4s}"
            f" {row['gflop']:9.2f} GFLOP")
    if "skipped" in row:
        print(f"{head}  skipped: {row['skipped']}", flush=True)
        return
    print(f"{head}  {row['median_s'] * 1e3:9.1f} ms (min {row['min_s'] * 1e3:.1f}, max {row['max_s'] * 1e3:.1f})"
          f"  {row['gflops']:6.1f} GFLOP/s  best {100 * row['fraction_of_peak']:5.1f}% of peak"
          f"  load {row['loadavg_before'][0]:.1f}", flush=True)


def run(args, result: dict) -> None:
    result["forward"] = bench_forward(args.quick, args.forward_combos)

