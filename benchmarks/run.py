"""Benchmarks of the networks, samplers, trainer, metrics and workflow (issue #8).

Every measurement is repeated; the JSON keeps median, min and max seconds and the load average
(``os.getloadavg()``) before and after, because other jobs share the machine. Networks have random
weights (speed does not depend on the values, except the sampler's accept/reject decisions, which
change how many trials run: calls per image are reported beside every sampler rate).

Sections (``--only``): env, forward, sampler, train, metrics, workflow (off unless ``--all`` or
named). Targets are printed beside the measurements; nothing is asserted.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("env", "forward", "sampler", "train", "metrics", "workflow")
DEFAULT_SECTIONS = ("env", "forward", "sampler", "train", "metrics")

# fp32 matmul peak of the 2-core development CPU (issue #8); the GPU target is not measurable there.
CPU_PEAK_GFLOPS = 150.0
PEAK = {"gflops": CPU_PEAK_GFLOPS, "what": "assumed CPU fp32 peak"}  # on CUDA: the fp32 matmul measured at start
TARGETS = {
    "sampler_speedup_vs_reference_order": 5.0,   # tiny config, 2 CPU cores, identical outputs
    "sampler_max_abs_diff": 1e-5,
    "paper_unet_256_fraction_of_peak": 0.75,     # reference: 0.61 (9.1 s per forward, 0.83 TFLOP)
    "workflow_seconds": 600.0,                   # embedded default workflow, 2 cores
    "h100_paper_T100_seconds_per_256px_image": 2.0,
}
FORMATS = ("nchw", "cl")  # contiguous NCHW, channels_last


def _tiny_preset() -> dict:
    """Network and sampler settings of the embedded default (config/config.yaml, the `tiny` preset)."""
    import yaml

    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    m, s = cfg["model"], cfg["sampling"]
    return {"nf": m["nf"], "depth": m["depth"], "ngf": m["critic_ngf"], "attn_heads": m["attn_heads"],
            "attn_dim_head": m["attn_dim_head"], "T": cfg["sde"]["T"], "batch": s["batch_size"],
            "sampler": {k: s[k] for k in ("u_max", "u_min", "jump", "re", "switch")}}


# tiny: the default workflow's networks and sampler; paper: nf 64, depth 4, 4 x 32 attention, the
# reference's resampling constants (u_max 6, u_min 3, jump 5, re 5)
CONFIGS = {
    "tiny": _tiny_preset(),
    "paper": {"nf": 64, "depth": 4, "ngf": 64, "attn_heads": 4, "attn_dim_head": 32, "T": 100, "batch": 1,
              "sampler": {}},
}


def describe(config: str) -> str:
    c = CONFIGS[config]
    return (f"nf {c['nf']}, depth {c['depth']}, attention {c['attn_heads']}x{c['attn_dim_head']}, "
            f"critic ngf {c['ngf']}")


# ---------------------------------------------------------------------- measuring

DEVICE = torch.device("cpu")  # set by main() from --device


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)

def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def measure(fn, repeats: int, warmup: int = 1) -> dict:
    """Seconds per call of ``fn()``: median/min/max over ``repeats`` timed calls after ``warmup``."""
    load_before = loadavg()
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats,
            "warmup": warmup, "loadavg_before": load_before, "loadavg_after": loadavg()}


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def calibrate_matmul(n: int = 0, repeats: int = 5) -> dict:
    """Achieved fp32 GFLOP/s of an n x n matmul now: the ceiling the machine gives us at this load."""
    n = n or (8192 if DEVICE.type == "cuda" else 1024)
    a, b = torch.randn(n, n, device=DEVICE), torch.randn(n, n, device=DEVICE)
    r = measure(lambda: a @ b, repeats, warmup=2)
    r["gflops_best"] = 2 * n**3 / r["min_s"] / 1e9
    r["gflops_median"] = 2 * n**3 / r["median_s"] / 1e9
    r["n"] = n
    return r


# ---------------------------------------------------------------------- environment

def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def env_info() -> dict:
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "cuda": torch.cuda.is_available(), "loadavg": loadavg(), "cpu_peak_gflops_assumed": CPU_PEAK_GFLOPS,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ---------------------------------------------------------------------- networks

def build(kind: str, config: str, device="cpu") -> torch.nn.Module:
    from strdiffusion.checkpoints import build_network

    c = CONFIGS[config]
    kw = {"ngf": c["ngf"]} if kind == "critic" else \
        {"nf": c["nf"], "depth": c["depth"], "attn_heads": c["attn_heads"], "attn_dim_head": c["attn_dim_head"]}
    return build_network(kind, **kw).to(device)


def inference_net(kind: str, config: str, seed: int = 0, fmt: str = "nchw") -> torch.nn.Module:
    """A random-weight network as the inpaint stage uses it: eval mode, no grads, spectral norm baked."""
    from strdiffusion.nets import bake_spectral_norm

    torch.manual_seed(seed)
    net = build(kind, config).eval().requires_grad_(False).to(DEVICE)
    if kind == "texture":
        bake_spectral_norm(net)
    return net.to(memory_format=torch.channels_last) if fmt == "cl" else net


def forward_call(kind: str, net, batch: int, px: int, device=None, fmt: str = "nchw"):
    """A closure running one forward of ``net`` on random inputs of the inpainting shapes."""
    g = torch.Generator().manual_seed(0)
    device = DEVICE if device is None else device

    def rand(*shape):
        x = torch.rand(*shape, generator=g).to(device)
        return x.contiguous(memory_format=torch.channels_last) if fmt == "cl" else x

    t = torch.full((batch,), 50, dtype=torch.long, device=device)
    if kind == "critic":
        x, s = rand(batch, 3, px, px), rand(batch, 1, px, px)
        return lambda: net(t, x, s, stddev_group=1)
    c = 1 if kind == "structure" else 3
    x, mu = rand(batch, c, px, px), rand(batch, c, px, px)
    if kind == "texture":
        guidance = rand(batch, 1, px, px)
        return lambda: net(x, mu, t, guidance)
    return lambda: net(x, mu, t)


def flops_on_meta(kind: str, config: str, batch: int, px: int) -> int:
    """FLOPs of one forward, counted on the meta device (no arithmetic is done)."""
    with torch.device("meta"):
        net = build(kind, config, "meta").eval()
    with torch.inference_mode():
        return count_flops(forward_call(kind, net, batch, px, "meta"))


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
            nets = {fmt: inference_net(kind, config, fmt=fmt) for fmt in FORMATS}
            for (c, px, batch), fmt in ((combo, fmt) for combo in grid for fmt in FORMATS):
                if c != config:
                    continue
                net = nets[fmt]
                row = {"net": kind, "config": config, "px": px, "batch": batch, "format": fmt}
                row["gflop"] = flops_on_meta(kind, config, batch, px) / 1e9
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
                    row.update(measure(forward_call(kind, net, batch, px, fmt=fmt), repeats, warmup))
                row["gflops"] = row["gflop"] / row["median_s"]
                row["gflops_best"] = row["gflop"] / row["min_s"]
                row["fraction_of_peak"] = row["gflops_best"] / PEAK["gflops"]
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


# ---------------------------------------------------------------------- samplers

def sampler_inputs(batch: int, px: int, seed: int = 0):
    """Random image, a centred-box mask (1 = known) and structure maps of the batch."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, px, px, generator=g)
    mask = torch.ones(batch, 1, px, px)
    q = px // 4
    for b in range(batch):
        off = (b * 3) % q
        mask[b, :, q + off:3 * q + off - q // 2, q:3 * q] = 0
    gray = image.mean(1, keepdim=True)
    edge = (torch.rand(batch, 1, px, px, generator=g) > 0.8).float()
    return image, mask, gray, edge


def calls_per_image(stats: dict) -> dict:
    out = {k: float(stats[k].float().mean()) for k in ("structure_calls", "texture_calls", "critic_calls", "trials")}
    out["network_calls"] = out["structure_calls"] + out["texture_calls"] + out["critic_calls"]
    return out


def sampler_setup(config: str, px: int, T: int, batch: int, fmt: str, kinds=("structure", "texture", "critic")):
    """(sde, sampler config, random-weight nets by kind, (image, mask, gray, edge) on DEVICE, image ids)."""
    from strdiffusion import sampling
    from strdiffusion.sde import IRSDE

    nets = {k: inference_net(k, config, seed=i, fmt=fmt) for i, k in enumerate(kinds)}
    inputs = tuple(v.to(DEVICE) for v in sampler_inputs(batch, px))
    return (IRSDE(T=T, device=DEVICE), sampling.SamplerConfig(**CONFIGS[config]["sampler"]), nets, inputs,
            [f"img{b}" for b in range(batch)])


def bench_sampler(runs: list[tuple]) -> list[dict]:
    """Images per second of the batched samplers; beside them the reference-order loop.

    ``runs``: (config, px, T, batch, format, with_reference_order) tuples. The reference-order loop
    runs in the same process, on the same weights, inputs and noise, one image at a time.
    """
    from strdiffusion import sampling, sampling_reference

    rows = []
    for config, px, T, batch, fmt, with_reference in runs:
        sde, sampler_config, nets, (image, mask, gray, edge), ids = sampler_setup(
            config, px, T, batch, fmt, ("structure", "texture", "critic", "irsde"))
        structure_fn, texture_fn, critic_fn = sampling.net_callables(
            nets["structure"], nets["texture"], nets["critic"], channels_last=fmt == "cl")
        _, irsde_fn, _ = sampling.net_callables(texture_net=nets["irsde"], channels_last=fmt == "cl")
        gens = lambda: sampling.make_generators(0, ids)  # noqa: E731 fresh, identical noise every run

        base = {"config": config, "px": px, "T": T, "batch": batch, "format": fmt,
                "sampler_config": dataclasses.asdict(sampler_config)}
        out_b, st_b, sec_b, load_b = timed(lambda: sampling.sample_strdiffusion(
            sde, structure_fn, texture_fn, critic_fn, image, mask, gray, edge, gens(), sampler_config))
        row = {**base, "sampler": "strdiffusion (batched)", "seconds": sec_b, "images_per_s": batch / sec_b,
               "loadavg_before": load_b, "loadavg_after": loadavg(), **calls_per_image(st_b)}
        rows.append(row)
        print_row_sampler(row)
        if with_reference:
            out_r, st_r, sec_r, load_r = timed(lambda: sampling_reference.sample_reference_order(
                sde, structure_fn, texture_fn, critic_fn, image, mask, gray, edge, gens(), sampler_config))
            ref = {**base, "sampler": "strdiffusion (reference order)", "seconds": sec_r,
                   "images_per_s": batch / sec_r, "loadavg_before": load_r, "loadavg_after": loadavg(),
                   **calls_per_image(st_r)}
            ref["max_abs_diff_vs_batched"] = float((out_r - out_b).abs().max())
            ref["identical_outputs"] = bool(torch.equal(out_r, out_b))
            # the reference also scores D_n at early steps without trials; the other counts must agree
            ref["same_call_counts"] = all(torch.equal(st_r[k], st_b[k]) for k in
                                          ("structure_calls", "texture_calls", "trials", "accepted"))
            row["speedup_vs_reference_order"] = sec_r / sec_b
            row["max_abs_diff_vs_reference_order"] = ref["max_abs_diff_vs_batched"]
            row["identical_to_reference_order"] = ref["identical_outputs"]
            rows.append(ref)
            print_row_sampler(ref)
            print(f"    batched / reference order: {row['speedup_vs_reference_order']:.2f}x "
                  f"(target >= {TARGETS['sampler_speedup_vs_reference_order']:g}x), max |diff| "
                  f"{ref['max_abs_diff_vs_batched']:.2e} (target <= {TARGETS['sampler_max_abs_diff']:g}), "
                  f"bit-identical: {ref['identical_outputs']}, same structure/texture/trial counts: "
                  f"{ref['same_call_counts']}", flush=True)
        _, st_i, sec_i, load_i = timed(lambda: sampling.sample_irsde(sde, irsde_fn, image, mask, gens()))
        row = {**base, "sampler": "irsde (batched)", "seconds": sec_i, "images_per_s": batch / sec_i,
               "loadavg_before": load_i, "loadavg_after": loadavg(), **calls_per_image(st_i)}
        rows.append(row)
        print_row_sampler(row)
    return rows


def timed(fn):
    """(out, stats, seconds, load before) of a sampler call."""
    load = loadavg()
    sync()
    t0 = time.perf_counter()
    out, stats = fn()
    sync()
    return out, stats, time.perf_counter() - t0, load


PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


@contextlib.contextmanager
def precision_flags(precision: str):
    """TF32 on for ``tf32`` only (CUDA), restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def bench_precision(config: str, px: int, T: int, batch: int, precisions=PRECISIONS) -> list[dict]:
    """StrDiffusion sampling (batched, channels_last) at each precision: seconds per image, and how far
    the output moves from the fp32 output on the same weights, inputs and noise (random weights: the
    effect on a table's metrics needs trained checkpoints, see benchmarks/README.md)."""
    from strdiffusion import sampling

    sde, sampler_config, nets, (image, mask, gray, edge), ids = sampler_setup(config, px, T, batch, "cl")
    rows, reference = [], None
    for precision in precisions:
        autocast = precision if precision in ("bf16", "fp16") else None
        fns = sampling.net_callables(nets["structure"], nets["texture"], nets["critic"], autocast=autocast,
                                     channels_last=True)
        with precision_flags(precision):
            out, stats, sec, load = timed(lambda: sampling.sample_strdiffusion(
                sde, *fns, image, mask, gray, edge, sampling.make_generators(0, ids), sampler_config))
        row = {"config": config, "px": px, "T": T, "batch": batch, "format": "cl", "precision": precision,
               "sampler": f"strdiffusion (batched, {precision})", "seconds": sec, "images_per_s": batch / sec,
               "seconds_per_image": sec / batch, "loadavg_before": load, **calls_per_image(stats)}
        if reference is None and precision == "fp32":
            reference = out
        if reference is not None:
            diff = (out - reference).float()
            row["max_abs_diff_vs_fp32"] = float(diff.abs().max())
            mse = float((diff ** 2).mean())
            row["psnr_vs_fp32_db"] = float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)
        rows.append(row)
        print_row_sampler(row)
        if "max_abs_diff_vs_fp32" in row:
            print(f"    {precision}: {row['seconds_per_image']:.2f} s per image, max |diff| to fp32 "
                  f"{row['max_abs_diff_vs_fp32']:.2e}, PSNR to fp32 {row['psnr_vs_fp32_db']:.1f} dB", flush=True)
    return rows


def print_row_sampler(row: dict) -> None:
    print(f"  {row['sampler']:31s} {row['config']:5s} {row['px']}px T={row['T']:<3d} B={row['batch']:<2d} {row['format']:4s}"
          f" {row['seconds']:8.1f} s  {row['images_per_s']:.4f} img/s  {row['network_calls']:.0f} calls/img"
          f" (S {row['structure_calls']:.0f}, X {row['texture_calls']:.0f}, D {row['critic_calls']:.0f})"
          f"  load {row['loadavg_before'][0]:.1f}", flush=True)


# ---------------------------------------------------------------------- training

def synthetic_batch(batch: int, px: int, T: int, seed: int = 0) -> dict:
    """A training batch as ``train.TrainingSet`` yields it (see its docstring), from random data."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, px, px, generator=g)
    mask = (torch.rand(batch, 1, px, px, generator=g) > 0.3).float()
    return {"image": image, "gray": image.mean(1, keepdim=True),
            "edge": (torch.rand(batch, 1, px, px, generator=g) > 0.8).float(), "mask": mask,
            "t": torch.randint(2, T + 1, (batch,), generator=g), "noise": torch.randn(batch, 3, px, px, generator=g),
            "noise_s": torch.randn(batch, 1, px, px, generator=g)}


def bench_train(quick: bool, config: str = "tiny", batch: int = 8, px: int = 64, T: int = 20) -> list[dict]:
    """Per network: the trainer's step (``train.objective`` + backward + Adam) in it/s, images/s and
    GFLOP/s (forward + backward FLOPs counted by torch's FlopCounterMode) as a share of the fp32
    matmul peak measured in the same run (issue 13: small nets should reach >= 50 %)."""
    from strdiffusion import train
    from strdiffusion.methods import NETWORKS
    from strdiffusion.sde import IRSDE

    sde = IRSDE(T=T, device=DEVICE)
    data = {k: v.to(DEVICE) for k, v in synthetic_batch(batch, px, T).items()}
    repeats = 3 if quick else 10
    peak = calibrate_matmul(repeats=3)["gflops_best"]
    rows = []
    for kind in NETWORKS:
        torch.manual_seed(0)
        net = build(kind, config, DEVICE).train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)

        def step():
            loss = train.objective(net, sde, data, kind)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def fwd_bwd():
            train.objective(net, sde, data, kind).backward()

        flops = count_flops(fwd_bwd)
        opt.zero_grad(set_to_none=True)
        row = {"net": kind, "config": config, "batch": batch, "px": px, **measure(step, repeats, warmup=1)}
        row["it_per_s"] = 1.0 / row["median_s"]
        row["images_per_s"] = batch / row["median_s"]
        row["gflop_per_step"] = flops / 1e9
        row["gflops"] = flops / row["median_s"] / 1e9
        row["peak_gflops"] = peak
        row["share_of_peak"] = row["gflops"] / peak
        rows.append(row)
        print(f"  train {kind:9s} {config} b{batch} {px}px  {row['median_s'] * 1e3:8.1f} ms/it"
              f" (min {row['min_s'] * 1e3:.1f}, max {row['max_s'] * 1e3:.1f})  {row['it_per_s']:.2f} it/s"
              f"  {row['images_per_s']:.1f} img/s  {row['gflops']:.1f} GFLOP/s = {100 * row['share_of_peak']:.0f} %"
              f" of {peak:.0f}  load {row['loadavg_before'][0]:.1f}", flush=True)
    return rows


# ---------------------------------------------------------------------- metrics

def random_inception():
    """pytorch-fid's FID Inception (pool3, 2048-d) with random weights: throughput only."""
    from unittest import mock

    from pytorch_fid import inception as fid

    from strdiffusion.metric_nets import random_fid_inception

    with mock.patch.object(fid, "fid_inception_v3", random_fid_inception):
        return fid.InceptionV3([fid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()


def random_lpips():
    """LPIPS (AlexNet, v0.1) with random trunk and linear weights: throughput only."""
    import warnings

    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lpips.LPIPS(net="alex", version="0.1", pretrained=False, pnet_rand=True, verbose=False).eval()


def bench_metrics(quick: bool, px: int = 256, batch: int = 16) -> list[dict]:
    repeats = 2 if quick else 5
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, px, px, generator=g).to(DEVICE)
    y = torch.rand(batch, 3, px, px, generator=g).to(DEVICE)
    rows = []
    inception = random_inception().to(DEVICE)
    with torch.inference_mode():
        r = measure(lambda: inception(x), repeats, warmup=1)
    r.update(metric="FID Inception features (random weights, throughput only)", px=px, batch=batch,
             items_per_s=batch / r["median_s"], unit="images/s")
    rows.append(r)
    model = random_lpips().to(DEVICE)
    with torch.inference_mode():
        r = measure(lambda: model(x * 2 - 1, y * 2 - 1), repeats, warmup=1)
    r.update(metric="LPIPS AlexNet (random weights, throughput only)", px=px, batch=batch,
             items_per_s=batch / r["median_s"], unit="pairs/s")
    rows.append(r)
    for r in rows:
        print(f"  {r['metric']:58s} {px}px b{batch}  {r['items_per_s']:8.1f} {r['unit']}"
              f" (median {r['median_s']:.2f} s/batch, min {r['min_s']:.2f}, max {r['max_s']:.2f})"
              f"  load {r['loadavg_before'][0]:.1f}", flush=True)
    return rows


# ---------------------------------------------------------------------- workflow

def bench_workflow(timeout_s: int = 3600) -> dict:
    """Wall time of ``snakemake --cores all`` on the repository's default config in a temporary copy."""
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    with tempfile.TemporaryDirectory(prefix="strdiffusion-wf-") as tmp:
        work = Path(tmp) / "run"
        work.mkdir()
        shutil.copy(REPO / "Snakefile", work / "Snakefile")
        for folder in ("workflow", "config", "checkpoints"):  # checkpoints: the shipped nets the default samples
            shutil.copytree(REPO / folder, work / folder)
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["TORCH_HOME"] = str(Path(tmp) / "torch_home")  # empty, as offline: no metric weights
        load = loadavg()
        t0 = time.perf_counter()
        try:
            res = subprocess.run([snakemake, "--cores", "all"], cwd=work, env=env, capture_output=True, text=True,
                                 timeout=timeout_s)
            rc, tail = res.returncode, res.stderr[-2000:]
        except subprocess.TimeoutExpired:
            rc, tail = None, f"timed out after {timeout_s} s"
        seconds = time.perf_counter() - t0
    row = {"seconds": seconds, "returncode": rc, "loadavg_before": load, "loadavg_after": loadavg(),
           "target_s": TARGETS["workflow_seconds"], "meets_target": rc == 0 and seconds <= TARGETS["workflow_seconds"]}
    if rc != 0:
        row["stderr_tail"] = tail
    print(f"  workflow (default config, empty results/): {seconds:.0f} s, exit {rc}"
          f" (target <= {TARGETS['workflow_seconds']:.0f} s)  load {load[0]:.1f}", flush=True)
    return row


# ---------------------------------------------------------------------- summary

def summary(result: dict) -> dict:
    """The measurements the issue's targets are about, with their ratios to the targets."""
    out = {}
    for row in result.get("forward", []):
        if row["net"] in ("texture", "structure") and row["config"] == "paper" and row["px"] == 256 \
                and row["batch"] == 1 and "skipped" not in row and DEVICE.type == "cpu":
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
    if "workflow" in result:
        out["workflow_seconds"] = {"measured": result["workflow"]["seconds"], "target": TARGETS["workflow_seconds"]}
    gpu = {r["precision"]: r for r in result.get("sampler", []) if r.get("precision") and r["px"] == 256}
    out["h100_paper_T100_seconds_per_256px_image"] = {
        "measured": gpu["fp32"]["seconds_per_image"] if "fp32" in gpu else None,
        "target": TARGETS["h100_paper_T100_seconds_per_256px_image"],
        **({"device": result["env"].get("gpu"), "by_precision": {p: r["seconds_per_image"] for p, r in gpu.items()},
            "batch": gpu["fp32"]["batch"]} if gpu else
           {"note": "not measurable: no GPU on this machine" if DEVICE.type == "cpu" else "not run"})}
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small grid, few repeats (a few minutes)")
    p.add_argument("--all", action="store_true", help="every section, the workflow included (slow)")
    p.add_argument("--only", default="", help=f"comma-separated sections of {', '.join(SECTIONS)}")
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
    a = p.parse_args(argv)
    sections = [s.strip() for s in a.only.split(",") if s.strip()] or list(SECTIONS if a.all else DEFAULT_SECTIONS)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    a.sections = sections
    return a


def main(argv=None) -> int:
    global DEVICE
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.device == "auto":
        DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        DEVICE = torch.device(a.device)
        if DEVICE.type == "cuda" and not torch.cuda.is_available():
            print(f"error: --device {a.device}: no CUDA device is available; use --device cpu", file=sys.stderr)
            return 2
    from strdiffusion.precision import configure

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
    result["device"] = str(DEVICE)
    result["matmul_calibration"] = cal = calibrate_matmul()
    if DEVICE.type == "cuda":  # no assumed peak: % of the fp32 (non-TF32) matmul measured now
        PEAK.update(gflops=cal["gflops_best"], what=f"fp32 matmul {cal['n']}^3 measured at start")
    result["peak"] = dict(PEAK)
    print(f"  fp32 matmul {cal['n']}^3 on {DEVICE} now: {cal['gflops_best']:.1f} GFLOP/s best"
          f" (% of peak below: of {PEAK['gflops']:.0f} GFLOP/s, {PEAK['what']})", flush=True)

    def save():
        result["summary"] = summary(result)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str))
        tmp.replace(a.out)

    if "forward" in a.sections:
        print("== forward (inference, random weights)", flush=True)
        result["forward"] = bench_forward(a.quick, a.forward_combos)
        save()
    if "sampler" in a.sections:
        print("== samplers (random weights; calls per image depend on the critic's decisions)", flush=True)
        tiny = CONFIGS["tiny"]
        T, batch = a.sampler_T or tiny["T"], a.sampler_batch or tiny["batch"]
        runs = [("tiny", 64, T, batch, fmt, True) for fmt in FORMATS]
        if a.paper_sampler_T and not a.quick and DEVICE.type == "cpu":
            runs.append(("paper", 64, a.paper_sampler_T, 1, "cl", False))
        result["sampler"] = bench_sampler(runs)
        if DEVICE.type == "cuda":  # the issue's GPU target: paper config, T=100, 256 px
            print("== paper-config sampler on CUDA, 256 px, T=100, by precision", flush=True)
            result["sampler"] += bench_precision("paper", 256, 100, a.gpu_batch)
        save()
    if "train" in a.sections:
        print("== training step (tiny config, batch 8, 64 px, synthetic batch)", flush=True)
        result["train"] = bench_train(a.quick)
        save()
    if "metrics" in a.sections:
        print("== metric networks", flush=True)
        result["metrics"] = bench_metrics(a.quick)
        save()
    if "workflow" in a.sections:
        print("== workflow", flush=True)
        result["workflow"] = bench_workflow(a.workflow_timeout)
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
