"""The trainer's step per network: it/s, images/s and GFLOP/s against the fp32 matmul peak measured in the
same run (section ``train``; tiny config, synthetic batch)."""
from __future__ import annotations

import torch

from . import common
from .common import build, calibrate_matmul, count_flops, measure

TITLE = "training step (tiny config, batch 8, 64 px, synthetic batch)"


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
    matmul peak measured in the same run (small nets should reach >= 50 %)."""
    from strdiffusion.core.sde import IRSDE
    from strdiffusion.settings.methods import NETWORKS
    from strdiffusion.training import trainer as train

    sde = IRSDE(T=T, device=common.DEVICE)
    data = {k: v.to(common.DEVICE) for k, v in synthetic_batch(batch, px, T).items()}
    repeats = 3 if quick else 10
    peak = calibrate_matmul(repeats=3)["gflops_best"]
    rows = []
    for kind in NETWORKS:
        torch.manual_seed(0)
        net = build(kind, config, common.DEVICE).train()
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


def run(args, result: dict) -> None:
    result["train"] = bench_train(args.quick)
