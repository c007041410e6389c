"""What every benchmark section shares: the configurations measured, the device, timing with the load
average beside it, FLOP counting, the machine's description and random-weight networks.

Every measurement is repeated; rows keep median, min and max seconds and the load average
(``os.getloadavg()``) before and after, because other jobs share the machine.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

# fp32 matmul peak of the 2-core development CPU; the GPU target is not measurable there.
CPU_PEAK_GFLOPS = 150.0
PEAK = {"gflops": CPU_PEAK_GFLOPS, "what": "assumed CPU fp32 peak"}  # on CUDA: the fp32 matmul measured at start
TARGETS = {
    "sampler_speedup_vs_reference_order": 5.0,   # tiny config, 2 CPU cores, identical outputs
    "sampler_max_abs_diff": 1e-5,
    "paper_unet_256_fraction_of_peak": 0.75,     # reference: 0.61 (9.1 s per forward, 0.83 TFLOP)
    "workflow_seconds": 600.0,                   # embedded default workflow, 2 cores
    "h100_paper_T100_seconds_per_256px_image": 2.0,
    "own_image_seconds": 60.0,                   # strdiffusion inpaint --image, 1,600 x 1,200 and 4,000 x 3,000
    "own_image_peak_mb": 1536.0,
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
    from strdiffusion.models.checkpoints import build_network

    c = CONFIGS[config]
    kw = {"ngf": c["ngf"]} if kind == "critic" else \
        {"nf": c["nf"], "depth": c["depth"], "attn_heads": c["attn_heads"], "attn_dim_head": c["attn_dim_head"]}
    return build_network(kind, **kw).to(device)


def inference_net(kind: str, config: str, seed: int = 0, fmt: str = "nchw") -> torch.nn.Module:
    """A random-weight network as the inpaint stage uses it: eval mode, no grads, spectral norm baked."""
    from strdiffusion.core.nets import bake_spectral_norm

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


def timed(fn):
    """(out, stats, seconds, load before) of a sampler call."""
    load = loadavg()
    sync()
    t0 = time.perf_counter()
    out, stats = fn()
    sync()
    return out, stats, time.perf_counter() - t0, load
