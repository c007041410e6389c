"""Images per second of the batched samplers, beside the reference-order loop on the same weights, inputs
and noise (section ``sampler``); on CUDA also the paper configuration at each precision. Random weights:
the critic's decisions, and so the calls per image reported beside every rate, depend on them."""
from __future__ import annotations

import contextlib
import dataclasses
import math

import torch

from . import common
from .common import CONFIGS, FORMATS, TARGETS, inference_net, loadavg, timed

TITLE = "samplers (random weights; calls per image depend on the critic's decisions)"


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
    """(sde, sampler config, random-weight nets by kind, (image, mask, gray, edge) on common.DEVICE, image ids)."""
    from strdiffusion.core.constants import SamplerConfig
    from strdiffusion.core.sde import IRSDE

    nets = {k: inference_net(k, config, seed=i, fmt=fmt) for i, k in enumerate(kinds)}
    inputs = tuple(v.to(common.DEVICE) for v in sampler_inputs(batch, px))
    return (IRSDE(T=T, device=common.DEVICE), SamplerConfig(**CONFIGS[config]["sampler"]), nets, inputs,
            [f"img{b}" for b in range(batch)])


def bench_sampler(runs: list[tuple]) -> list[dict]:
    """Images per second of the batched samplers; beside them the reference-order loop.

    ``runs``: (config, px, T, batch, format, with_reference_order) tuples. The reference-order loop
    runs in the same process, on the same weights, inputs and noise, one image at a time.
    """
    from strdiffusion.core import sampling, sampling_reference

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
    from strdiffusion.core import sampling

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


def run(args, result: dict) -> None:
    tiny = CONFIGS["tiny"]
    T, batch = args.sampler_T or tiny["T"], args.sampler_batch or tiny["batch"]
    runs = [("tiny", 64, T, batch, fmt, True) for fmt in FORMATS]
    if args.paper_sampler_T and not args.quick and common.DEVICE.type == "cpu":
        runs.append(("paper", 64, args.paper_sampler_T, 1, "cl", False))
    result["sampler"] = bench_sampler(runs)
    if common.DEVICE.type == "cuda":  # the GPU target: paper config, T=100, 256 px
        print("== paper-config sampler on CUDA, 256 px, T=100, by precision", flush=True)
        result["sampler"] += bench_precision("paper", 256, 100, args.gpu_batch)
