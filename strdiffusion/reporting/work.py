"""The work of the network jobs, counted on PyTorch's meta device, and the time it takes on a device.

Work is three numbers, counted by running the real code on the meta device (shapes without data) under a
dispatch mode (``torch.utils.flop_counter`` counts the floating-point operations of convolutions and matrix
products):

- ``flops``: floating-point operations of the convolutions and matrix products;
- ``bytes``: bytes read and written by every other operation (normalisations, activations, the SDE's
  arithmetic, the optimiser), which memory bandwidth bounds;
- ``ops``: operations dispatched, each with a fixed cost (PyTorch's dispatch, a GPU's kernel launch).

Time is ``flops / (peak x utilization) + bytes / bandwidth + ops x overhead`` (:func:`seconds`): a roofline
with a per-operation cost, because the networks are small enough that neither term alone dominates at every
size. A training iteration is the objective's forward and backward pass and Adam's step; a sampled image is
every network's forward passes, times the calls the sampler makes per image: derived from its schedule
(:func:`calls_per_image`), resampling trials counted at their maximum (every trial accepted).
"""
from __future__ import annotations

import dataclasses
import functools


@dataclasses.dataclass(frozen=True)
class Work:
    flops: float = 0.0
    bytes: float = 0.0
    ops: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(self.flops + other.flops, self.bytes + other.bytes, self.ops + other.ops)

    def __mul__(self, k: float) -> Work:
        return Work(self.flops * k, self.bytes * k, self.ops * k)


@dataclasses.dataclass(frozen=True)
class Rates:
    """A device's rates: ``flops`` per second at peak, memory ``bandwidth`` in bytes per second, ``overhead``
    seconds per dispatched operation, and the ``utilization`` of the peak that convolutions reach."""

    flops: float
    bandwidth: float
    overhead: float
    utilization: float


def seconds(work: Work, rates: Rates) -> float:
    return work.flops / (rates.flops * rates.utilization) + work.bytes / rates.bandwidth + work.ops * rates.overhead


def _counted(fn) -> Work:
    """The work of ``fn()`` (on meta tensors)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    class _Traffic(TorchDispatchMode):
        ops = moved = 0

        def __torch_dispatch__(self, func, types, call_args=(), kwargs=None):
            out = func(*call_args, **(kwargs or {}))
            self.ops += 1
            if func.overloadpacket not in flop_registry:
                self.moved += sum(t.numel() * t.element_size() for t in tree_leaves((call_args, kwargs, out))
                                  if isinstance(t, torch.Tensor))
            return out

    traffic = _Traffic()
    with FlopCounterMode(display=False) as counter, traffic:
        fn()
    return Work(float(counter.get_total_flops()), float(traffic.moved), float(traffic.ops))


def autocast_like(dtype):
    """A context in which convolutions and matrix products take ``dtype`` inputs (their float32 arguments cast, the
    casts recorded by autograd), and every other operation keeps its inputs' dtype: what ``torch.autocast`` does on
    a GPU, for the meta device, which autocast does not reach. A ``float32`` dtype changes nothing."""
    import contextlib

    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_map

    if dtype == torch.float32:
        return contextlib.nullcontext()
    cast = {F.conv1d, F.conv2d, F.conv_transpose2d, F.linear, torch.matmul, torch.Tensor.__matmul__, torch.mm,
            torch.bmm, torch.addmm, torch.baddbmm, torch.einsum}

    def to_half(x):
        return x.to(dtype) if isinstance(x, torch.Tensor) and x.dtype == torch.float32 else x

    class _Autocast(TorchFunctionMode):
        def __torch_function__(self, func, types, call_args=(), kwargs=None):
            if func in cast:
                call_args, kwargs = tree_map(to_half, call_args), tree_map(to_half, kwargs or {})
            return func(*call_args, **(kwargs or {}))

    return _Autocast()


def dtype_of(amp: str):
    """The dtype a job's convolutions and matrix products run in under its mixed precision ``amp`` (the config's
    ``none``, ``bf16`` or ``fp16``)."""
    import torch

    from strdiffusion.runtime.precision import MixedPrecision

    return MixedPrecision.DTYPES[amp] or torch.float32


def meta_net(kind: str, kwargs: tuple):
    """Network ``kind`` (constructor arguments ``kwargs``, sorted items) on the meta device: shapes, no data."""
    import torch

    from strdiffusion.models.checkpoints import build_network

    with torch.device("meta"):
        return build_network(kind, **dict(kwargs))


def meta_train_step(kind: str, kwargs: tuple, batch: int, px: int, T: int, amp: str = "none"):
    """(network, batch, step) on the meta device: ``step()`` is one training iteration of network ``kind`` at
    ``batch`` x ``px`` px, the objective's forward pass (under ``amp``, :func:`autocast_like`), its backward pass
    and Adam's step, as the trainer runs them."""
    import torch

    from strdiffusion.core.objectives import objective
    from strdiffusion.core.sde import IRSDE

    net = meta_net(kind, kwargs).train()
    meta = dict(device="meta")
    images = {"image": 3, "gray": 1, "edge": 1, "mask": 1, "noise": 3, "noise_s": 1}
    data = {name: torch.empty(batch, c, px, px, **meta) for name, c in images.items()}
    data["t"] = torch.randint(2, T + 1, (batch,), **meta)
    sde = IRSDE(T=T, device="meta")
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, foreach=False)
    half = dtype_of(amp)

    def step():
        with autocast_like(half):
            loss = objective(net, sde, data, kind)
        loss.backward()
        opt.step()

    return net, data, step


def meta_forward(kind: str, kwargs: tuple, batch: int, px: int):
    """(network, call) on the meta device: ``call()`` is one forward pass of network ``kind`` at ``batch`` x ``px``
    px, as the sampler calls it (the critic scoring each image alone)."""
    import torch

    net = meta_net(kind, kwargs).eval().requires_grad_(False)
    t = torch.full((batch,), 5, dtype=torch.long, device="meta")

    def image(channels):
        return torch.empty(batch, channels, px, px, device="meta")

    if kind == "critic":
        x, s = image(3), image(1)
        return net, lambda: net(t, x, s, stddev_group=1)
    c = 1 if kind == "structure" else 3
    x, mu = image(c), image(c)
    if kind == "texture":
        g = image(1)
        return net, lambda: net(x, mu, t, g)
    return net, lambda: net(x, mu, t)


@functools.lru_cache(maxsize=None)
def train_work(kind: str, kwargs: tuple, batch: int, px: int, T: int, amp: str = "none") -> Work:
    """One training iteration of network ``kind`` (constructor arguments ``kwargs``, sorted items) at ``batch`` x
    ``px`` px (:func:`meta_train_step`) under mixed precision ``amp``."""
    _, _, step = meta_train_step(kind, kwargs, batch, px, T, amp)
    return _counted(step)


@functools.lru_cache(maxsize=None)
def forward_work(kind: str, kwargs: tuple, batch: int, px: int, amp: str = "none") -> Work:
    """One forward pass of network ``kind`` at ``batch`` x ``px`` px, as the sampler calls it, under mixed
    precision ``amp``."""
    import torch

    _, call = meta_forward(kind, kwargs, batch, px)
    with torch.inference_mode(), autocast_like(dtype_of(amp)):
        return _counted(call)


def calls_per_image(method: str, sampler, T: int) -> dict[str, int]:
    """Network calls the sampler makes per image for ``method`` (``sampler``: the core's SamplerConfig), every
    resampling trial counted (the most a run can make)."""
    from strdiffusion.settings.methods import DIFFUSION

    nets = DIFFUSION[method]
    if nets == ("irsde",):
        return {"irsde": T}
    sampler = dataclasses.replace(sampler, resample="critic" in nets)
    calls = dict.fromkeys(nets, 0)
    t_switch = sampler.switch_step(T)
    for t in range(T, t_switch - 1, -1):
        if t < 1:
            break
        calls["structure"] += 1
        calls["texture"] += 1
        steps = sampler.trial_steps(t, T)
        if steps:
            trials = sampler.u_max - 1
            calls["critic"] += 1 + trials
            calls["structure"] += trials * steps
            calls["texture"] += trials
    calls["texture"] += len(range(min(t_switch - 1, T), 0, -1))
    return calls


def sample_work(method: str, sampler, T: int, kwargs_of, batch: int, px: int, amp: str = "none") -> Work:
    """The work of one sampled image: each network's forward passes at ``batch`` per call, divided among the
    batch's images. ``kwargs_of(kind)``: the network's constructor arguments (sorted items)."""
    total = Work()
    for kind, n in calls_per_image(method, sampler, T).items():
        total = total + forward_work(kind, kwargs_of(kind), batch, px, amp) * (n / batch)
    return total
