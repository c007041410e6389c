"""Tests for strdiffusion/reporting/plan.py: the traced peak memory against a measured one, and the plan's table."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

from strdiffusion.reporting import plan as P
from strdiffusion.stages import plan as plan_stage

# One real training step on CPU; prints the growth of the process's peak RSS over the step. glibc
# keeps freed heap pages resident above its dynamic mmap threshold; a fixed threshold (env below)
# returns them, so RSS follows the live tensors the planner counts.
_MEASURE = textwrap.dedent("""
    import sys, json, torch
    from strdiffusion.reporting import plan as plan
    from strdiffusion.models.checkpoints import build_network
    from strdiffusion.core.objectives import objective
    from strdiffusion.core.sde import IRSDE

    kind, batch, px, model = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
    def status(key):
        return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
    torch.manual_seed(0)
    net = build_network(kind, **plan._net_kwargs(kind, model)).train()
    T = 100
    g = torch.Generator().manual_seed(0)
    data = {"image": torch.rand(batch, 3, px, px), "gray": torch.rand(batch, 1, px, px),
            "edge": (torch.rand(batch, 1, px, px) > 0.8).float(), "mask": (torch.rand(batch, 1, px, px) > 0.3).float(),
            "t": torch.randint(2, T + 1, (batch,)), "noise": torch.randn(batch, 3, px, px),
            "noise_s": torch.randn(batch, 1, px, px)}
    sde = IRSDE(T=T)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, foreach=False)
    small = {k: (v[:1, :, :16, :16] if v.dim() == 4 else v[:1]) for k, v in data.items()}
    objective(net, sde, small, kind).backward()  # loads the kernels and thread pools before the baseline
    net.zero_grad(set_to_none=True)
    base = status("VmRSS:")
    objective(net, sde, data, kind).backward()
    opt.step()
    print("growth", status("VmHWM:") - base)
""")


def _measured_growth(kind, batch, px, model) -> int:
    import json

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "2"}
    res = subprocess.run([sys.executable, "-c", _MEASURE, kind, str(batch), str(px), json.dumps(model)],
                         capture_output=True, text=True, timeout=1800, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    return int(res.stdout.split("growth")[-1])


def test_plan_traced_peak_counts_live_tensors_and_frees():
    def fn():
        a = torch.empty(1000, device="meta")           # 4,000 bytes
        b = torch.empty(500, device="meta", dtype=torch.float64)  # + 4,000
        del a                                          # - 4,000
        c = torch.empty(250, device="meta")            # + 1,000: 5,000 live, below the 8,000 peak
        v = b.view(50, 10)                             # a view adds nothing
        return v, c

    assert P.traced_peak_bytes(fn) == 8000
    # a training step holds more than a forward without gradients
    model = {"nf": 8, "depth": 2, "attn_heads": 1, "attn_dim_head": 8, "critic_ngf": 8}
    step = P.train_step_peak("structure", model, 2, 32)
    assert step["params"] == 4 * sum(p.numel() for p in P._build_meta("structure", model).parameters())
    assert step["grads"] == step["params"] and step["traced"] > 2 * step["params"]  # Adam's two states at least
    assert step["total"] == step["params"] + step["step"] + step["batch"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "paper_128"])
def test_plan_training_step_estimate_within_a_quarter_of_the_measured_peak(preset, repo_root):
    import yaml

    if preset == "tiny":
        cfg = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
        model, batch, px, kind = cfg["model"], cfg["train"]["batch_size"], cfg["image_size"], "texture"
    else:  # the paper's structure UNet (137 M parameters) at 128 px, one image per step
        model = {"nf": 64, "depth": 4, "attn_heads": 4, "attn_dim_head": 32, "critic_ngf": 64}
        batch, px, kind = 1, 128, "structure"
    est = P.train_step_peak(kind, model, batch, px)
    measured = _measured_growth(kind, batch, px, model)
    print(f"{preset}: estimated {est['step'] / 2**20:.0f} MB, measured {measured / 2**20:.0f} MB")
    assert abs(est["step"] - measured) < 0.25 * measured, (est["step"], measured)


@pytest.mark.slow
def test_plan_cli_psv_table_csv_job_counts_and_warnings(tmp_path, repo_root, capsys):
    import math

    import yaml

    profile = tmp_path / "profile"
    profile.mkdir()
    prof = yaml.safe_load((repo_root / "profiles" / "slurm" / "config.yaml").read_text())
    prof["set-resources"]["set_metrics"]["mem_mb"] = 100  # below any estimate
    (profile / "config.yaml").write_text(yaml.safe_dump(prof))
    out = tmp_path / "plan.csv"
    assert plan_stage.main(["--configfile", str(repo_root / "config/paper/psv.yaml"), "--profile", str(profile),
                   "--gpu-mem-gb", "16", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    table = pd.read_csv(out)
    cfg = P.load_config([repo_root / "config/paper/psv.yaml"])
    ds = cfg["datasets"][cfg["run_datasets"][0]]
    bins, methods = len(ds["masks"]["bins"]), len(cfg["methods"])
    shards = math.ceil(ds["n_test"] / cfg["sampling"]["shard_size"])
    inpaint = table[table.rule.str.startswith("inpaint_shard")]
    assert inpaint.jobs.sum() == shards * bins * methods and len(inpaint) == methods
    assert table.set_index("rule").loc["set_metrics", "jobs"] == bins * methods
    assert table.set_index("rule").loc["reference_stats", "jobs"] == bins
    texture = table.set_index("rule").loc["train_texture"]
    assert texture.params_m == pytest.approx(163, rel=0.02)  # the paper's texture UNet
    assert "warning: set_metrics" in text and "mem_mb 100" in text
    assert "warning: train_texture" in text and "16 GB" in text  # the paper's training step needs more
    assert "warning: image_metrics" not in text
    assert "unknown" in text  # no benchmark of the paper networks at 256 px


def test_plan_times_from_a_benchmark_give_gpu_hours_and_runtime_warnings(tmp_path):
    import json

    cfg = P.load_config([])  # the embedded default: tiny networks
    bench = tmp_path / "bench.json"
    batch, px = cfg["train"]["batch_size"], cfg["image_size"]
    bench.write_text(json.dumps({"device": "cuda", "configs": {"tiny": {"nf": cfg["model"]["nf"]}},
                                 "train": [{"net": "texture", "config": "tiny", "batch": batch, "px": px,
                                            "median_s": 0.5}]}))
    rows = {r["rule"]: r for r in P.plan_rows(cfg, benchmarks=bench)}
    texture = rows["train_texture"]
    iters = cfg["train"].get("net_iterations", {}).get("texture", cfg["train"]["iterations"])
    assert texture["seconds_per_unit"] == 0.5 and texture["gpu_hours"] == pytest.approx(0.5 * iters / 3600)
    assert rows["train_structure"]["seconds_per_unit"] is None  # not measured: unknown
    minutes = 0.5 * iters / 60
    profile = {"default": {}, "rules": {"train_texture": {"runtime": minutes / 2}}}
    warnings = P.warnings_for(list(rows.values()), profile, 80.0)
    assert any(w.startswith("warning: train_texture") and "runtime" in w for w in warnings)
    profile["rules"]["train_texture"]["runtime"] = minutes * 2
    assert not any("runtime" in w for w in P.warnings_for(list(rows.values()), profile, 80.0))
