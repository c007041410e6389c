"""Throughput of the metric networks, FID's Inception and LPIPS's AlexNet, with random weights (section
``metrics``)."""
from __future__ import annotations

import torch

from . import common
from .common import measure

TITLE = "metric networks"


def random_inception():
    """pytorch-fid's FID Inception (pool3, 2048-d) with random weights: throughput only."""
    from unittest import mock

    from pytorch_fid import inception as fid

    from strdiffusion.metrics.nets import random_fid_inception

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
    x = torch.rand(batch, 3, px, px, generator=g).to(common.DEVICE)
    y = torch.rand(batch, 3, px, px, generator=g).to(common.DEVICE)
    rows = []
    inception = random_inception().to(common.DEVICE)
    with torch.inference_mode():
        r = measure(lambda: inception(x), repeats, warmup=1)
    r.update(metric="FID Inception features (random weights, throughput only)", px=px, batch=batch,
             items_per_s=batch / r["median_s"], unit="images/s")
    rows.append(r)
    model = random_lpips().to(common.DEVICE)
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


def run(args, result: dict) -> None:
    result["metrics"] = bench_metrics(args.quick)
