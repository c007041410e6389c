"""``strdiffusion plan``: what a config costs before the first job: jobs, peak memory, time and disk.

For a config (merged over ``config/config.yaml`` as Snakemake merges ``--configfile``) and a profile
(``<profile>/config.yaml``), one row per job kind: the number of jobs; the peak memory of one job;
the time per training iteration or sampled image where ``benchmarks/out/latest.json`` holds a
measurement of that network, batch and size (else ``unknown``); the GPU-hours of all jobs of the
kind; the disk its outputs take; and a warning when the profile grants less memory or time.

Peak memory of a network job is traced, not run: the network is built on PyTorch's meta device
(shapes without data) and one training step (forward, backward, Adam) or one sampler forward is
executed there under a dispatch mode that adds up the bytes of every tensor an operation creates
and subtracts them when it is freed; the peak of that sum, plus the parameters and the batch, is
the estimate. Metric jobs are estimated from their inputs (2,048 float32 features per image, a few
2,048 x 2,048 float64 matrices, the metric networks and one chunk of images).
"""
from __future__ import annotations

import functools
import json
import math
import sys
import weakref
from pathlib import Path

from strdiffusion.io.errors import UserError
from strdiffusion.io.files import write_csv_atomic

REPO = Path(__file__).resolve().parents[2]
MB = 2 ** 20
# the process itself: Python, torch, numpy, pandas and the metric networks (measured RSS after import, CPU)
PROCESS_MB = {"cpu": 600, "metric_nets": 200}
PNG_BYTES_PER_PIXEL = 2.0  # photographs, RGB: about 2 of the 3 raw bytes after PNG's compression


# ---------------------------------------------------------------------------------------------
# tracing

def traced_peak_bytes(fn) -> int:
    """Peak bytes of the tensors that ``fn()`` creates and holds at once (run it on meta tensors:
    nothing is computed). Views and in-place results add nothing; a tensor counts until freed."""
    import torch
    from torch.utils import _pytree as pytree
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Live(TorchDispatchMode):
        live = peak = 0

        def _free(self, n):
            self.live -= n

        def __torch_dispatch__(self, func, types, call_args=(), kwargs=None):
            out = func(*call_args, **(kwargs or {}))
            if not any(r.alias_info is not None for r in func._schema.returns):
                for t in pytree.tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        n = t.untyped_storage().nbytes()
                        self.live += n
                        self.peak = max(self.peak, self.live)
                        weakref.finalize(t, self._free, n)
            return out

    mode = _Live()
    with mode:
        fn()
    return mode.peak


def _net_kwargs(kind: str, model: dict) -> dict:
    if kind == "critic":
        return {"ngf": model["critic_ngf"]}
    return {k: model[k] for k in ("nf", "depth", "attn_heads", "attn_dim_head")}


def _build_meta(kind: str, model: dict):
    import torch

    from strdiffusion.models.checkpoints import build_network

    with torch.device("meta"):
        return build_network(kind, **_net_kwargs(kind, model))


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def train_step_peak(kind: str, model: dict, batch: int, px: int, T: int = 100) -> dict:
    """Peak bytes of one training step of network ``kind`` (forward, backward, Adam) at ``batch`` x
    ``px`` px: parameters + gradients + traced peak (activations kept for backward, Adam's two state
    tensors, temporaries) + the batch. Returns the parts, ``step`` (what the step adds to a process
    that holds the network and the batch) and ``total``."""
    import torch

    from strdiffusion.core.objectives import objective
    from strdiffusion.core.sde import IRSDE

    net = _build_meta(kind, model).train()
    meta = dict(device="meta")
    data = {"image": torch.empty(batch, 3, px, px, **meta), "gray": torch.empty(batch, 1, px, px, **meta),
            "edge": torch.empty(batch, 1, px, px, **meta), "mask": torch.empty(batch, 1, px, px, **meta),
            "t": torch.randint(2, T + 1, (batch,), **meta), "noise": torch.empty(batch, 3, px, px, **meta),
            "noise_s": torch.empty(batch, 1, px, px, **meta)}
    sde = IRSDE(T=T, device="meta")
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, foreach=False)

    def step():
        objective(net, sde, data, kind).backward()
        opt.step()

    params = _bytes(net.parameters())
    traced = traced_peak_bytes(step)
    # gradients are handed from the backward pass to the parameters inside autograd, where the
    # tracer does not see them live: they are counted here, one per trainable parameter
    grads = _bytes(p for p in net.parameters() if p.requires_grad)
    batch_bytes = _bytes(data.values())
    return {"params": params, "grads": grads, "traced": traced, "step": grads + traced, "batch": batch_bytes,
            "total": params + grads + traced + batch_bytes}


def sampler_peak(kinds, model: dict, batch: int, px: int) -> dict:
    """Peak bytes of sampling with networks ``kinds`` at ``batch`` x ``px`` px: every network's
    parameters + the largest traced forward + the sampler's state (a few images per network)."""
    params, forward = 0, 0
    for kind in kinds:
        p, f = _forward_peak(kind, tuple(sorted(model.items())), batch, px)
        params, forward = params + p, max(forward, f)
    state = 16 * batch * 4 * px * px * 4  # image, mask, structure, states and trials: ~16 x 4 channels
    return {"params": params, "traced": forward, "batch": state, "total": params + forward + state}


@functools.lru_cache(maxsize=None)
def _forward_peak(kind: str, model_items: tuple, batch: int, px: int) -> tuple[int, int]:
    """(parameter bytes, traced peak of one forward) of network ``kind``; the same for every method."""
    import torch

    net = _build_meta(kind, dict(model_items)).eval().requires_grad_(False)
    meta = dict(device="meta")
    t = torch.full((batch,), 5, dtype=torch.long, **meta)
    if kind == "critic":
        x, s = torch.empty(batch, 3, px, px, **meta), torch.empty(batch, 1, px, px, **meta)
        call = lambda: net(t, x, s, stddev_group=1)  # noqa: E731
    else:
        c = 1 if kind == "structure" else 3
        x, mu = torch.empty(batch, c, px, px, **meta), torch.empty(batch, c, px, px, **meta)
        if kind == "texture":
            g = torch.empty(batch, 1, px, px, **meta)
            call = lambda: net(x, mu, t, g)  # noqa: E731
        else:
            call = lambda: net(x, mu, t)  # noqa: E731
    with torch.inference_mode():
        return _bytes(net.parameters()), traced_peak_bytes(call)


# ---------------------------------------------------------------------------------------------
# config, profile, benchmarks

def load_config(configfiles) -> dict:
    """``config/config.yaml`` with each file merged over it as the workflow does, validated."""
    from strdiffusion.settings.config import workflow_config

    return workflow_config(REPO, configfiles)


def load_profile(profile) -> dict:
    """Resources per rule from ``<profile>/config.yaml``: default-resources updated by set-resources."""
    import yaml

    if not profile:
        return {}
    path = Path(profile) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{path}: profile not found; give the profile's folder (e.g. profiles/slurm)")
    prof = yaml.safe_load(path.read_text()) or {}
    default = dict(prof.get("default-resources") or {})
    rules = {rule: {**default, **(res or {})} for rule, res in (prof.get("set-resources") or {}).items()}
    return {"default": default, "rules": rules}


def _benchmark_rates(path) -> dict:
    """(net, nf, batch, px) -> seconds per training iteration, from a benchmarks JSON (if any)."""
    path = Path(path)
    if not path.is_file():
        return {}
    result = json.loads(path.read_text())
    configs = result.get("configs", {})
    out = {("device",): result.get("device", "cpu")}
    for row in result.get("train", []):
        nf = configs.get(row["config"], {}).get("nf")
        out[(row["net"], nf, row["batch"], row["px"])] = row["median_s"]
    return out


# ---------------------------------------------------------------------------------------------
# the plan

def plan_rows(cfg: dict, gpu_mem_gb: float = 80.0, benchmarks=None) -> list[dict]:
    """One dict per job kind: rule, jobs, peak_mb (and where: cpu/gpu), seconds per unit, GPU-hours, disk."""
    from strdiffusion.settings.methods import (
        CLASSICAL,
        base_method,
        method_networks,
        train_iterations,
        trained_networks,
    )

    rates = _benchmark_rates(benchmarks or REPO / "benchmarks" / "out" / "latest.json")
    model, px = cfg["model"], cfg["image_size"]
    rows = []
    datasets = cfg["run_datasets"] or list(cfg["datasets"])
    n_data = len(datasets)
    n_bins = sum(len(cfg["datasets"][d]["masks"]["bins"]) for d in datasets)
    n_test = {d: cfg["datasets"][d]["n_test"] for d in datasets}
    shard = cfg["sampling"]["shard_size"]
    methods = cfg["methods"]
    image_bytes = px * px * 3 * PNG_BYTES_PER_PIXEL
    train_batch = cfg["train"]["batch_size"]
    for net in trained_networks(cfg):
        est = train_step_peak(net, model, train_batch, px, cfg["sde"]["T"])
        iters = train_iterations(cfg, net)
        sec = rates.get((net, model["nf"] if net != "critic" else model["nf"], train_batch, px))
        params = est["params"]
        rows.append(dict(rule=f"train_{net}", jobs=n_data, device="gpu", peak_mb=est["total"] / MB,
                         params_m=params / 4 / 1e6, unit="iteration", seconds_per_unit=sec,
                         gpu_hours=(sec * iters * n_data / 3600) if sec else None, units_per_job=iters,
                         disk_mb=n_data * params * 4 / MB))  # weights + resumable state (Adam: 2 more)
    sample_batch = cfg["sampling"]["batch_size"]
    for method in methods:
        nets = method_networks(base_method(method))
        shards = sum(math.ceil(n / shard) for n in n_test.values()) * n_bins // max(n_data, 1)
        images = sum(n_test.values()) * n_bins // max(n_data, 1)
        classical = base_method(method) in CLASSICAL or not nets
        est = {"total": 0} if classical else sampler_peak(nets, model, sample_batch, px)
        rows.append(dict(rule=f"inpaint_shard[{method}]", jobs=shards, device="cpu" if classical else "gpu",
                         peak_mb=(est["total"] / MB) if not classical else
                         PROCESS_MB["cpu"] + 4 * shard * image_bytes / MB,
                         params_m=(est.get("params", 0) / 4 / 1e6), unit="image", seconds_per_unit=None,
                         gpu_hours=0.0 if classical else None, units_per_job=shard,
                         disk_mb=images * image_bytes / MB))
    per_set = cfg["metrics"]["per_set"]
    n_largest = max(n_test.values())
    features_mb = 2 * n_largest * 2048 * 4 / MB
    if per_set:
        rows.append(dict(rule="reference_stats", jobs=n_bins, device="cpu",
                         peak_mb=PROCESS_MB["cpu"] + PROCESS_MB["metric_nets"] + features_mb / 2 + 3 * 32,
                         params_m=23.9, unit="image", seconds_per_unit=None, gpu_hours=0.0,
                         disk_mb=n_bins * (n_largest * 2048 * 4 + 2 * 32 * MB) / MB))
    rows.append(dict(rule="image_metrics", jobs=n_bins * len(methods), device="cpu",
                     peak_mb=PROCESS_MB["cpu"] + PROCESS_MB["metric_nets"] + 2 * 64 * px * px * 3 / MB,
                     params_m=2.5, unit="image", seconds_per_unit=None, gpu_hours=0.0,
                     disk_mb=n_bins * len(methods) * n_largest * 120 / MB))
    rows.append(dict(rule="set_metrics", jobs=n_bins * len(methods) if per_set else n_bins * len(methods),
                     device="cpu", peak_mb=PROCESS_MB["cpu"] + PROCESS_MB["metric_nets"] + features_mb + 4 * 32,
                     params_m=23.9, unit="image", seconds_per_unit=None, gpu_hours=0.0,
                     disk_mb=n_bins * len(methods) * 300 / MB))
    rows.append(dict(rule="prepare_data", jobs=n_data, device="cpu", peak_mb=PROCESS_MB["cpu"], params_m=0.0,
                     unit="image", seconds_per_unit=None, gpu_hours=0.0,
                     disk_mb=sum(n_test.values()) * image_bytes * 3 / MB))  # test images, structure, masks
    # extract_structure (train, test), test/train masks, pairs, table, figures per data set; curves, weights
    others = 7 * n_data + (n_data if trained_networks(cfg) else 0) + (1 if cfg["metrics"]["fetch_weights"] else 0)
    rows.append(dict(rule="other (masks, structure, tables)", jobs=others, device="cpu", peak_mb=PROCESS_MB["cpu"],
                     params_m=0.0, unit="image", seconds_per_unit=None, gpu_hours=0.0, disk_mb=0.0))
    return rows


def warnings_for(rows, profile: dict, gpu_mem_gb: float) -> list[str]:
    """A line per job kind whose profile memory (CPU jobs: mem_mb), GPU memory or runtime (where the time
    per unit is measured) is below the estimate."""
    out = []
    for row in rows:
        rule = row["rule"].split("[")[0]
        res = profile.get("rules", {}).get(rule, profile.get("default", {})) if profile else {}
        if row["device"] == "gpu":
            if row["peak_mb"] > gpu_mem_gb * 1024:
                out.append(f"warning: {row['rule']}: estimated peak {row['peak_mb'] / 1024:.1f} GB > the GPU's "
                           f"{gpu_mem_gb:g} GB (--gpu-mem-gb); lower the batch size")
        elif res.get("mem_mb") and row["peak_mb"] > float(res["mem_mb"]):
            out.append(f"warning: {row['rule']}: estimated peak {row['peak_mb']:.0f} MB > the profile's mem_mb "
                       f"{res['mem_mb']}; raise set-resources: {rule}: mem_mb")
        if res.get("runtime") and row.get("seconds_per_unit") and row.get("units_per_job"):
            minutes = row["seconds_per_unit"] * row["units_per_job"] / 60
            if minutes > float(res["runtime"]):
                out.append(f"warning: {row['rule']}: estimated {minutes:.0f} min per job > the profile's runtime "
                           f"{res['runtime']} min; raise set-resources: {rule}: runtime")
    return out


def render(rows) -> str:
    head = f"{'job kind':38s} {'jobs':>6s} {'on':>4s} {'peak MB':>9s} {'params M':>9s} {'s/unit':>12s} " \
           f"{'GPU-h':>8s} {'disk MB':>10s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        sec = f"{r['seconds_per_unit']:.3g}/{r['unit'][:4]}" if r["seconds_per_unit"] else "unknown"
        gpu_h = "unknown" if r["gpu_hours"] is None else f"{r['gpu_hours']:.1f}"
        lines.append(f"{r['rule']:38s} {r['jobs']:6d} {r['device']:>4s} {r['peak_mb']:9.0f} {r['params_m']:9.1f} "
                     f"{sec:>12s} {gpu_h:>8s} {r['disk_mb']:10.0f}")
    known = [r["gpu_hours"] for r in rows if r["device"] == "gpu"]
    total = "unknown (no benchmark of these networks at this size)" if any(h is None for h in known) \
        else f"{sum(known):.1f}"
    lines.append(f"total: {sum(r['jobs'] for r in rows)} jobs, GPU-hours {total}, "
                 f"disk {sum(r['disk_mb'] for r in rows) / 1024:.1f} GB")
    return "\n".join(lines)


def report(configfiles, profile: str, gpu_mem_gb: float, benchmarks: str, out) -> None:
    """Print the plan of ``configfiles`` and the warnings against ``profile``; write the table to ``out``."""
    import pandas as pd

    cfg = load_config(configfiles)
    rows = plan_rows(cfg, gpu_mem_gb, benchmarks or None)
    print(render(rows))
    for line in warnings_for(rows, load_profile(profile), gpu_mem_gb):
        print(line)
    write_csv_atomic(pd.DataFrame(rows), out)
    print(f"wrote {out}", file=sys.stderr)
