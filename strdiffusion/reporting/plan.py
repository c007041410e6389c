"""``strdiffusion plan``: what a config costs before the first job: jobs, peak memory, time and disk.

For a config (merged over ``config/config.yaml`` as Snakemake merges ``--configfile``) and a profile
(``<profile>/config.yaml``), one row per job kind: the number of jobs (the jobs ``snakemake -n`` plans); the peak
memory of one job; the time per training iteration or sampled image; the GPU-hours of all jobs of the kind; the
disk its outputs take; and a warning when the profile grants less memory or time, naming what fits.

Peak memory of a network job is traced, not run: the network is built on PyTorch's meta device
(shapes without data) and one training step (forward, backward, Adam) or one sampler forward is
executed there under a dispatch mode that adds up the bytes of every tensor an operation creates
and subtracts them when it is freed; the peak of that sum, plus the parameters and the batch, is
the estimate. Under mixed precision (``train.amp``) the step is traced in its dtype, beside float32 master weights,
gradients and Adam states. Metric jobs are estimated from their inputs (2,048 float32 features per image, a few
2,048 x 2,048 float64 matrices, the metric networks and one chunk of images).

Time per unit comes from a measured rate where ``--benchmarks`` (``benchmarks/out/latest.json``, written by
``python -m benchmarks``) holds one for that network, batch and size on a GPU, else from the counted work of
:mod:`strdiffusion.reporting.work` on a GPU of :mod:`strdiffusion.reporting.accelerators`; the table names the
source of each row.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import weakref
from pathlib import Path

from strdiffusion.core.constants import CRITIC_STDDEV_GROUP
from strdiffusion.io.errors import UserError
from strdiffusion.io.files import write_csv_atomic

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
    """Constructor arguments of network ``kind`` for the config's ``model`` section."""
    from strdiffusion.models.checkpoints import network_kwargs
    from strdiffusion.settings.jobs import ModelSettings

    return network_kwargs(kind, ModelSettings(**{k: model[k] for k in ("nf", "depth", "critic_ngf", "attn_heads",
                                                                       "attn_dim_head")}))


def _net_key(kind: str, model: dict) -> tuple:
    """:func:`_net_kwargs` as sorted items, the form :mod:`strdiffusion.reporting.work` caches on."""
    return tuple(sorted(_net_kwargs(kind, model).items()))


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def train_step_peak(kind: str, model: dict, batch: int, px: int, T: int = 100, amp: str = "none") -> dict:
    """See :func:`_train_step_peak`; traced once per network, size and batch."""
    return dict(_train_step_peak(kind, tuple(sorted(model.items())), batch, px, T, amp))


@functools.lru_cache(maxsize=None)
def _train_step_peak(kind: str, model_items: tuple, batch: int, px: int, T: int, amp: str) -> tuple:
    """Peak bytes of one training step of network ``kind`` (forward, backward, Adam) at ``batch`` x
    ``px`` px: parameters + gradients + traced peak (activations kept for backward, Adam's two state
    tensors, temporaries) + the batch. Returns the parts, ``step`` (what the step adds to a process
    that holds the network and the batch) and ``total``. ``amp`` (bf16, fp16): the step's convolutions and matrix
    products run in that dtype, as ``torch.autocast`` runs them (:func:`~strdiffusion.reporting.work.autocast_like`);
    weights, gradients and Adam's states stay float32."""
    from strdiffusion.reporting.work import meta_train_step

    net, data, step = meta_train_step(kind, _net_key(kind, dict(model_items)), batch, px, T, amp)
    params = _bytes(net.parameters())
    traced = traced_peak_bytes(step)
    # gradients are handed from the backward pass to the parameters inside autograd, where the
    # tracer does not see them live: they are counted here, one per trainable parameter
    grads = _bytes(p for p in net.parameters() if p.requires_grad)
    batch_bytes = _bytes(data.values())
    return tuple({"params": params, "grads": grads, "traced": traced, "step": grads + traced, "batch": batch_bytes,
                  "total": params + grads + traced + batch_bytes}.items())


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

    from strdiffusion.reporting.work import meta_forward

    net, call = meta_forward(kind, _net_key(kind, dict(model_items)), batch, px)
    with torch.inference_mode():
        return _bytes(net.parameters()), traced_peak_bytes(call)


# ---------------------------------------------------------------------------------------------
# config, profile, benchmarks

def load_config(configfiles, root=".") -> dict:
    """``config/config.yaml`` of the project folder ``root`` with each file merged over it as the workflow does,
    validated."""
    from strdiffusion.settings.config import workflow_config

    root = Path(root)
    if not (root / "config" / "config.yaml").is_file():
        raise UserError(f"{root.resolve()}: no config/config.yaml here; run the plan in the project's folder (the one "
                        "holding the Snakefile)")
    return workflow_config(root, configfiles)


def load_profile(profile) -> dict:
    """Resources per rule from ``<profile>/config.yaml``: default-resources updated by set-resources; and the
    number of times a preempted job is resubmitted (``preemptible-retries``)."""
    import yaml

    if not profile:
        return {}
    path = Path(profile) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{path}: profile not found; give the profile's folder (e.g. profiles/slurm)")
    prof = yaml.safe_load(path.read_text()) or {}
    default = dict(prof.get("default-resources") or {})
    rules = {rule: {**default, **(res or {})} for rule, res in (prof.get("set-resources") or {}).items()}
    return {"default": default, "rules": rules, "preemptible_retries": int(prof.get("preemptible-retries") or 0),
            "preemptible_rules": list(prof.get("preemptible-rules") or [])}


def _benchmark_rates(path) -> dict:
    """(net, nf, batch, px) -> seconds per training iteration measured on a GPU, from a benchmarks JSON (if any)."""
    path = Path(path)
    if not path.is_file():
        return {}
    result = json.loads(path.read_text())
    if not str(result.get("device", "cpu")).startswith("cuda"):
        return {}  # a CPU's rates say nothing about a GPU's
    configs = result.get("configs", {})
    out = {}
    for row in result.get("train", []):
        nf = configs.get(row["config"], {}).get("nf")
        out[(row["net"], nf, row["batch"], row["px"])] = row["median_s"]
    return out


# ---------------------------------------------------------------------------------------------
# the plan

@dataclasses.dataclass(frozen=True)
class GpuRates:
    """The rates of the GPU the plan times jobs on, by precision (``rates["bf16"]``), with the GPU's ``name`` (and
    its overridden peak) and the ``utilization`` for the table's heading."""

    name: str
    utilization: float
    by_precision: dict

    def __getitem__(self, precision: str):
        return self.by_precision[precision]

    def __str__(self) -> str:
        return f"{self.name}, utilization {self.utilization:g}"


def gpu_rates(gpu: str = "a100-80gb", tflops: float | None = None, bandwidth_tbs: float | None = None,
              utilization: float | None = None) -> GpuRates:
    """The rates of a GPU of the table (:mod:`strdiffusion.reporting.accelerators`), its peak and bandwidth
    overridden where given."""
    from strdiffusion.reporting.accelerators import DEFAULT_UTILIZATION, GPU_OVERHEAD_S, accelerator
    from strdiffusion.reporting.work import Rates

    acc = accelerator(gpu)
    u = DEFAULT_UTILIZATION if utilization is None else utilization
    bw = (bandwidth_tbs or acc.bandwidth_tbs) * 1e12
    by_precision = {p: Rates((tflops or acc.peak(p)) * 1e12, bw, GPU_OVERHEAD_S, u)
                    for p in ("fp32", "tf32", "bf16", "fp16")}
    return GpuRates(acc.name + (f" at {tflops:g} TFLOP/s" if tflops else ""), u, by_precision)


def _largest_batch(peak_mb, batch: int, limit_mb: float, step: int = 1) -> int:
    """The largest batch up to ``batch``, a multiple of ``step``, whose ``peak_mb(batch)`` fits ``limit_mb`` (0: not
    even the smallest)."""
    lo, hi = 0, batch // step
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if peak_mb(mid * step) <= limit_mb else (lo, mid - 1)
    return lo * step


def _train_rows(cfg: dict, n_data: int, gpu_mem_gb: float, measured: dict, rates: GpuRates) -> list[dict]:
    from strdiffusion.reporting.accelerators import precision
    from strdiffusion.reporting.work import seconds, train_work
    from strdiffusion.settings.methods import train_iterations, trained_networks

    model, px, T, t = cfg["model"], cfg["image_size"], cfg["sde"]["T"], cfg["train"]
    amp, batch = t.get("amp", "none"), t["batch_size"]
    prec = precision(amp, t.get("tf32", True))
    rows = []
    for net in trained_networks(cfg):
        est = train_step_peak(net, model, batch, px, T, amp)
        iters = train_iterations(cfg, net)
        sec = measured.get((net, model["nf"], batch, px))
        source = "measured (benchmarks)" if sec else f"work, {prec}"
        if not sec:
            sec = seconds(train_work(net, _net_key(net, model), batch, px, T, amp), rates[prec])
        fits = batch
        if est["total"] > gpu_mem_gb * 1024 * MB:
            step = CRITIC_STDDEV_GROUP if net == "critic" and batch % CRITIC_STDDEV_GROUP == 0 else 1
            fits = _largest_batch(lambda b: train_step_peak(net, model, b, px, T, amp)["total"] / MB, batch,
                                  gpu_mem_gb * 1024, step)
        rows.append(dict(rule=f"train_{net}", jobs=n_data, device="gpu", peak_mb=est["total"] / MB,
                         params_m=est["params"] / 4 / 1e6,
                         unit="iteration", seconds_per_unit=sec, source=source, gpu_hours=sec * iters * n_data / 3600,
                         units_per_job=iters, batch=batch, batch_fits=fits, batch_key="train.batch_size",
                         disk_mb=n_data * est["params"] * 4 / MB))  # weights + resumable state (Adam: 2 more)
    return rows


def _inpaint_rows(cfg: dict, n_data: int, n_bins: int, n_test: dict, gpu_mem_gb: float, rates: GpuRates) -> list[dict]:
    from strdiffusion.core.constants import SamplerConfig
    from strdiffusion.reporting.accelerators import precision
    from strdiffusion.reporting.work import sample_work, seconds
    from strdiffusion.settings.methods import CLASSICAL, base_method, method_networks

    model, px, s = cfg["model"], cfg["image_size"], cfg["sampling"]
    shard, batch = s["shard_size"], s["batch_size"]
    prec = precision(s.get("autocast", "none"), s.get("tf32", True))
    sampler = SamplerConfig(**{f: s[f] for f in ("u_max", "u_min", "jump", "re", "switch", "accept", "late_guidance",
                                                 "hole_fill", "denoise_last") if f in s})
    image_bytes = px * px * 3 * PNG_BYTES_PER_PIXEL
    shards = sum(math.ceil(n / shard) for n in n_test.values()) * n_bins // max(n_data, 1)
    images = sum(n_test.values()) * n_bins // max(n_data, 1)
    rows = []
    for method in cfg["methods"]:
        base = base_method(method)
        nets = method_networks(base)
        row = dict(rule=f"inpaint_shard[{method}]", jobs=shards, unit="image", units_per_job=shard,
                   disk_mb=images * image_bytes / MB, batch=batch, batch_fits=batch, batch_key="sampling.batch_size")
        if base in CLASSICAL or not nets:
            rows.append({**row, "device": "cpu", "peak_mb": PROCESS_MB["cpu"] + 4 * shard * image_bytes / MB,
                         "params_m": 0.0, "seconds_per_unit": None, "source": "", "gpu_hours": 0.0})
            continue
        est = sampler_peak(nets, model, batch, px)
        sec = seconds(sample_work(base, sampler, cfg["sde"]["T"], functools.partial(_net_key, model=model), batch, px,
                                  s.get("autocast", "none")), rates[prec])
        if est["total"] > gpu_mem_gb * 1024 * MB:
            row["batch_fits"] = _largest_batch(lambda b: sampler_peak(nets, model, b, px)["total"] / MB, batch,
                                               gpu_mem_gb * 1024)
        rows.append({**row, "device": "gpu", "peak_mb": est["total"] / MB, "params_m": est["params"] / 4 / 1e6,
                     "seconds_per_unit": sec, "source": f"work, {prec}", "gpu_hours": sec * images / 3600})
    return rows


def plan_rows(cfg: dict, gpu_mem_gb: float = 80.0, benchmarks=None, rates: GpuRates | None = None,
              measured: bool = True) -> list[dict]:
    """One dict per job kind: rule, jobs, peak_mb (and where: cpu/gpu), seconds per unit and their source,
    GPU-hours, the batch that fits the GPU, disk. ``rates``: :func:`gpu_rates` (default: an A100 80 GB);
    ``measured``: rates measured on a GPU (``benchmarks``) win where they exist."""
    from strdiffusion.settings.methods import trained_networks

    rates = rates or gpu_rates()
    measured = _benchmark_rates(benchmarks or Path("benchmarks") / "out" / "latest.json") if measured else {}
    px = cfg["image_size"]
    datasets = cfg["run_datasets"] or list(cfg["datasets"])
    n_data = len(datasets)
    n_bins = sum(len(cfg["datasets"][d]["masks"]["bins"]) for d in datasets)
    n_test = {d: cfg["datasets"][d]["n_test"] for d in datasets}
    methods = cfg["methods"]
    image_bytes = px * px * 3 * PNG_BYTES_PER_PIXEL
    rows = _train_rows(cfg, n_data, gpu_mem_gb, measured, rates)
    rows += _inpaint_rows(cfg, n_data, n_bins, n_test, gpu_mem_gb, rates)
    cpu = dict(device="cpu", unit="image", seconds_per_unit=None, source="", gpu_hours=0.0)
    per_set = cfg["metrics"]["per_set"]
    n_largest = max(n_test.values())
    features_mb = 2 * n_largest * 2048 * 4 / MB
    if per_set:
        rows.append(dict(rule="reference_stats", jobs=n_bins, **cpu,
                         peak_mb=PROCESS_MB["cpu"] + PROCESS_MB["metric_nets"] + features_mb / 2 + 3 * 32,
                         params_m=23.9, disk_mb=n_bins * (n_largest * 2048 * 4 + 2 * 32 * MB) / MB))
    rows.append(dict(rule="image_metrics", jobs=n_bins * len(methods), **cpu,
                     peak_mb=PROCESS_MB["cpu"] + PROCESS_MB["metric_nets"] + 2 * 64 * px * px * 3 / MB,
                     params_m=2.5, disk_mb=n_bins * len(methods) * n_largest * 120 / MB))
    rows.append(dict(rule="set_metrics", jobs=n_bins * len(methods), **cpu,
                     peak_mb=PROCESS_MB["cpu"] + PROCESS_MB["metric_nets"] + features_mb + 4 * 32,
                     params_m=23.9, disk_mb=n_bins * len(methods) * 300 / MB))
    rows.append(dict(rule="prepare_data", jobs=n_data, **cpu, peak_mb=PROCESS_MB["cpu"], params_m=0.0,
                     disk_mb=sum(n_test.values()) * image_bytes * 3 / MB))  # test images, structure, masks
    # per data set: structure maps (train, test), test and training masks, pairs, table, figures, explorer;
    # learning curves where a network is trained; the metric weights; the final target (all)
    others = 8 * n_data + (n_data if trained_networks(cfg) else 0) + (1 if cfg["metrics"]["fetch_weights"] else 0) + 1
    rows.append(dict(rule="other (masks, structure, tables, all)", jobs=others, **cpu, peak_mb=PROCESS_MB["cpu"],
                     params_m=0.0, disk_mb=0.0))
    return rows


STOP_BEFORE_LIMIT_S = 120.0  # a training saves and stops this long before its time limit (strdiffusion train)


def slots(row: dict, runtime_min: float) -> int:
    """Time slots of ``runtime_min`` minutes one job of ``row`` needs (each but the last ends with a save)."""
    usable = max(runtime_min * 60 - STOP_BEFORE_LIMIT_S, 60.0)
    return max(1, math.ceil(row["seconds_per_unit"] * row["units_per_job"] / usable))


def _resources(profile: dict | None, rule: str) -> dict:
    """The profile's resources of ``rule`` (its set-resources, else the default-resources)."""
    profile = profile or {}
    return profile.get("rules", {}).get(rule, profile.get("default", {}))


def warnings_for(rows, profile: dict, gpu_mem_gb: float) -> list[str]:
    """A line per job kind whose profile memory (CPU jobs: mem_mb), GPU memory or runtime is below the estimate,
    naming what fits: the batch, or the time slots a preemptible training needs."""
    out = []
    for row in rows:
        rule = row["rule"].split("[")[0]
        res = _resources(profile, rule)
        if row["device"] == "gpu":
            if row["peak_mb"] > gpu_mem_gb * 1024:
                fits = row.get("batch_fits", 0)
                hint = f"set {row['batch_key']}: {fits} (it fits)" if fits else "not even one image fits"
                out.append(f"warning: {row['rule']}: estimated peak {row['peak_mb'] / 1024:.1f} GB > the GPU's "
                           f"{gpu_mem_gb:g} GB (--gpu-mem-gb) at {row['batch_key']} {row['batch']}; {hint}")
        elif res.get("mem_mb") and row["peak_mb"] > float(res["mem_mb"]):
            out.append(f"warning: {row['rule']}: estimated peak {row['peak_mb']:.0f} MB > the profile's mem_mb "
                       f"{res['mem_mb']}; raise set-resources: {rule}: mem_mb")
        if not (res.get("runtime") and row.get("seconds_per_unit") and row.get("units_per_job")):
            continue
        minutes = row["seconds_per_unit"] * row["units_per_job"] / 60
        if rule in profile.get("preemptible_rules", ()):
            need, allowed = slots(row, float(res["runtime"])), profile.get("preemptible_retries", 0) + 1
            if need > allowed:
                out.append(f"warning: {row['rule']}: {minutes:.0f} min per job needs {need} time slots of "
                           f"{res['runtime']} min, but preemptible-retries allows {allowed}; raise "
                           f"preemptible-retries to {need - 1} or set-resources: {rule}: runtime")
        elif minutes > float(res["runtime"]):
            out.append(f"warning: {row['rule']}: estimated {minutes:.0f} min per job > the profile's runtime "
                       f"{res['runtime']} min; raise set-resources: {rule}: runtime")
    fits: dict[str, list[int]] = {}
    for row in rows:
        if row["device"] == "gpu" and row["peak_mb"] > gpu_mem_gb * 1024 and row.get("batch_fits"):
            fits.setdefault(row["batch_key"], []).append(row["batch_fits"])
    for key, batches in fits.items():
        critic = key == "train.batch_size" and any(r["rule"] == "train_critic" for r in rows)
        every = min(batches) // CRITIC_STDDEV_GROUP * CRITIC_STDDEV_GROUP if critic else min(batches)
        out.append(f"warning: {key}: {every} fits every job on a {gpu_mem_gb:g} GB GPU" +
                   (f" (the critic's batch is a multiple of {CRITIC_STDDEV_GROUP})" if critic else "") +
                   "; set it in a config overlay, and see docs/plan.md for what a smaller batch changes")
    return out


UNIT_SHORT = {"iteration": "iter", "image": "img"}  # the s/unit column


def render(rows, gpu: str = "", profile: dict | None = None) -> str:
    head = f"{'job kind':38s} {'jobs':>6s} {'on':>4s} {'peak MB':>9s} {'params M':>9s} {'s/unit':>12s} " \
           f"{'GPU-h':>8s} {'slots':>5s} {'disk MB':>10s}  time from"
    lines = [f"times on {gpu}" if gpu else "", head, "-" * len(head)]
    for r in rows:
        sec = f"{r['seconds_per_unit']:.3g}/{UNIT_SHORT[r['unit']]}" if r["seconds_per_unit"] else "—"
        res = _resources(profile, r["rule"].split("[")[0])
        slot = str(slots(r, float(res["runtime"]))) if r["seconds_per_unit"] and res.get("runtime") else ""
        lines.append(f"{r['rule']:38s} {r['jobs']:6d} {r['device']:>4s} {r['peak_mb']:9.0f} {r['params_m']:9.1f} "
                     f"{sec:>12s} {r['gpu_hours']:8.1f} {slot:>5s} {r['disk_mb']:10.0f}  {r['source']}")
    lines.append(f"total: {sum(r['jobs'] for r in rows)} jobs (as snakemake -n plans them), GPU-hours "
                 f"{sum(r['gpu_hours'] for r in rows):.1f}, disk {sum(r['disk_mb'] for r in rows) / 1024:.1f} GB")
    return "\n".join(line for line in lines if line)


def report(configfiles, profile: str, gpu_mem_gb: float, benchmarks: str, out, rates: GpuRates | None = None) -> None:
    """Print the plan of ``configfiles`` and the warnings against ``profile``; write the table to ``out``."""
    import pandas as pd

    cfg = load_config(configfiles)
    rates = rates or gpu_rates()
    rows = plan_rows(cfg, gpu_mem_gb, benchmarks or None, rates)
    prof = load_profile(profile)
    print(render(rows, str(rates), prof))
    for line in warnings_for(rows, prof, gpu_mem_gb):
        print(line)
    write_csv_atomic(pd.DataFrame(rows), out)
    print(f"wrote {out}", file=sys.stderr)
