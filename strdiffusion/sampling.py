"""Sampling: the StrDiffusion reverse process (spec §5), its variants, and the inpaint-stage glue.

Samplers are plain functions of model callables and tensors (no files, no global RNG):

- ``structure_fn(s, mu_s, t) -> eps_hat``          (B, 1, H, W)
- ``texture_fn(x, mu, t, guidance) -> eps_hat``    (B, 3, H, W); ``guidance`` is None for IR-SDE
- ``critic_fn(t, x, s) -> scores``                 (B,)

``t`` is a python int shared by the batch. :func:`net_callables` turns networks into these.

Conventions: images are float32 NCHW in [0, 1]; ``mask`` is (B, 1, H, W), 1 = KNOWN pixel,
0 = hole (mask FILES are white = hole, see :mod:`strdiffusion.utils`); ``gray`` and ``edge`` are
(B, 1, H, W) structure maps of the image (only their known part is used).

Randomness: image b draws every Gaussian from ``generators[b]`` (a CPU ``torch.Generator``), in
the order the reference draws them for that image alone (texture start, structure start, then per
step: known-structure marginal, structure step, texture step, and for each resampling trial its
``re`` forward and ``re`` reverse structure steps and one texture step). Images that stopped
trialling draw nothing, so a batch gives the same result as sampling its images one by one.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .sde import IRSDE, randn_like_per_sample
from .utils import UserError, read_image_rgb, read_mask, save_png_atomic, seed_for

log = logging.getLogger("strdiffusion.sampling")

ACCEPT = ("lower", "higher")
LATE_GUIDANCE = ("rgb_mean", "gray")
SAMPLERS = ("strdiffusion", "strdiffusion_noresample", "irsde")
# skimage.color.rgb2gray weights (ITU-R BT.709), for late_guidance="gray"
_GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)
# the critic halves the resolution three times
_CRITIC_MULTIPLE = 8


@dataclasses.dataclass
class SamplerConfig:
    """Constants of the StrDiffusion reverse process; defaults reproduce the reference sampler.

    u_max: trials per resampling step are at most ``u_max - 1``. u_min: from trial ``u_min`` on,
    a rejected trial stops the resampling (earlier rejected trials are averaged in).
    jump: resample at steps t with ``t % jump == 0`` (early stage only). re: forward re-noising
    steps of the structure per trial (clipped at T). switch: the early stage (structure network,
    critic) runs for t = T .. floor(switch * T). accept: ``lower`` keeps a trial when its critic
    score D_p < D_n (the reference), ``higher`` when D_p > D_n. late_guidance: guidance map of the
    late stage, ``rgb_mean`` (the reference: mean over RGB of the texture state) or ``gray``
    (BT.709 luma). hole_fill: value of hole pixels in the texture mean ``mu`` (reference 0).
    resample: False gives ``strdiffusion_noresample`` (no trials, no critic).
    """

    u_max: int = 6
    u_min: int = 3
    jump: int = 5
    re: int = 5
    switch: float = 0.4
    accept: str = "lower"
    late_guidance: str = "rgb_mean"
    hole_fill: float = 0.0
    resample: bool = True

    def __post_init__(self):
        for name in ("u_max", "u_min", "jump", "re"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                raise UserError(f"sampling.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0.0 <= self.switch <= 1.0:
            raise UserError(f"sampling.switch must be in [0, 1], got {self.switch}")
        if self.accept not in ACCEPT:
            raise UserError(f"sampling.accept must be one of {', '.join(ACCEPT)}, got {self.accept!r}")
        if self.late_guidance not in LATE_GUIDANCE:
            raise UserError(f"sampling.late_guidance must be one of {', '.join(LATE_GUIDANCE)}, "
                            f"got {self.late_guidance!r}")

    def switch_step(self, T: int) -> int:
        """First t of the late stage plus one: the early stage is t = T .. int(switch * T)."""
        return int(self.switch * T)  # the reference's int(0.4 * T)

    def trial_steps(self, t: int, T: int) -> int:
        """Forward re-noising steps of a trial at step t (0: no resampling at this t)."""
        if not self.resample or self.u_max <= 1 or t % self.jump != 0:
            return 0
        return min(self.re, T - t + 1)


def make_generators(seed, image_ids, bin_name="") -> list[torch.Generator]:
    """One CPU generator per image, seeded from (seed, image_id, bin) so noise follows the image."""
    gens = []
    for image_id in image_ids:
        g = torch.Generator(device="cpu")
        g.manual_seed(seed_for(seed, image_id, bin_name))
        gens.append(g)
    return gens


def _new_stats(B: int, device) -> dict:
    z = lambda: torch.zeros(B, dtype=torch.long)  # noqa: E731
    return {"structure_calls": z(), "texture_calls": z(), "critic_calls": z(), "trials": z(), "accepted": z()}


def _gray_of(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _late_guidance(x: torch.Tensor, how: str) -> torch.Tensor:
    return torch.mean(x, dim=1, keepdim=True) if how == "rgb_mean" else _gray_of(x)


def _check_inputs(image, mask, generators):
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
    if mask.shape != (image.shape[0], 1, *image.shape[2:]):
        raise ValueError(f"mask must be (B, 1, H, W) = {(image.shape[0], 1, *image.shape[2:])}, got {tuple(mask.shape)}")
    if len(generators) != image.shape[0]:
        raise ValueError(f"need one generator per image: {image.shape[0]} images, {len(generators)} generators")


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, leave=False)


# ---------------------------------------------------------------------------------------------
# batched samplers


@torch.inference_mode()
def sample_strdiffusion(sde: IRSDE, structure_fn, texture_fn, critic_fn, image, mask, gray, edge,
                        generators, config: SamplerConfig | None = None, progress: bool = False):
    """StrDiffusion inpainting of a batch; every resampling decision is made per image.

    Args:
        sde: the IR-SDE both networks were trained with.
        structure_fn, texture_fn, critic_fn: model callables (module docstring); ``critic_fn`` may
            be None when ``config.resample`` is False.
        image: (B, 3, H, W) in [0, 1]; only ``image * mask`` is used. mask: (B, 1, H, W), 1 = known.
        gray, edge: (B, 1, H, W) structure maps of the image. generators: one per image.
    Returns:
        (result, stats): result (B, 3, H, W) = image*m + x0_hat*(1-m) clamped to [0, 1]; stats holds
        per-image (B,) long tensors ``structure_calls``, ``texture_calls``, ``critic_calls``,
        ``trials`` and ``accepted`` (trials kept because the critic preferred them).
    """
    config = config or SamplerConfig()
    _check_inputs(image, mask, generators)
    if config.resample and config.u_max > 1 and critic_fn is None:
        raise ValueError("resampling needs a critic; pass critic_fn or set config.resample=False")
    B, T = image.shape[0], sde.T
    m = mask.to(image.dtype)
    hole = 1 - m
    gens = list(generators)
    stats = _new_stats(B, image.device)
    all_idx = torch.arange(B)

    def noise(like, idx):
        return randn_like_per_sample(like, [gens[i] for i in idx.tolist()])

    mu = image * m + config.hole_fill * hole
    mu_s = edge * m
    x0_s = gray * m
    mu_s_known = mu_s * m

    x = sde.start_state(mu, noise(mu, all_idx))
    s = sde.start_state(mu_s, noise(mu_s, all_idx))

    def texture_step(x_, mu_, t, guidance, idx):
        eps = texture_fn(x_, mu_, t, guidance)
        stats["texture_calls"][idx] += 1
        return sde.reverse_sde_step(x_, mu_, sde.score_from_noise(eps, t), t, noise(x_, idx))

    def structure_step(s_, t, idx, s_known_, m_, hole_):
        # paste the known structure, then one reverse step
        s_ = s_known_ * m_ + s_ * hole_
        mu_ = mu_s if len(idx) == B else mu_s[idx.to(mu_s.device)]
        eps = structure_fn(s_, mu_, t)
        stats["structure_calls"][idx] += 1
        return sde.reverse_sde_step(s_, mu_, sde.score_from_noise(eps, t), t, noise(s_, idx))

    def critic(t, x_, s_, idx):
        stats["critic_calls"][idx] += 1
        return critic_fn(t, x_, s_).reshape(-1).float()

    t_switch = config.switch_step(T)
    bar = _progress(T, progress, "sampling")
    try:
        for t in range(T, t_switch - 1, -1):
            if t < 1:
                break
            s_known = sde.forward_marginal(x0_s, mu_s_known, t - 1, noise(x0_s, all_idx))
            s = structure_step(s, t, all_idx, s_known, m, hole)
            x_cand = texture_step(x, mu, t, s, all_idx)
            s_cand = s
            steps = config.trial_steps(t, T)
            if steps:
                x_cand, s_cand = _resample(sde, config, t, steps, x, mu, x_cand, s_cand, s_known, m, hole,
                                           mu_s, all_idx, noise, structure_step, texture_step, critic, stats)
            x = x_cand
            s = s_known * m + s_cand * hole
            bar.update(1)
        for t in range(min(t_switch - 1, T), 0, -1):
            x = texture_step(x, mu, t, _late_guidance(x, config.late_guidance), all_idx)
            bar.update(1)
    finally:
        bar.close()
    stats["structure"] = s.clamp(0, 1)
    return _composite(image, m, x), stats


def _composite(image, m, x):
    """Known pixels from ``image``, holes from the sample, clamped to [0, 1].

    Equal to the reference's ``image*m + x*(1-m)`` for a 0/1 mask, but keeps known pixels exact
    even where the sample is not finite.
    """
    return torch.where(m > 0.5, image, x.clamp(0, 1))


def _resample(sde, config, t, steps, x, mu, x_cand, s_cand, s_known, m, hole, mu_s, all_idx, noise,
              structure_step, texture_step, critic, stats):
    """Adaptive resampling at step t; returns the (possibly replaced or averaged) candidates."""
    B = x.shape[0]
    d_n = critic(t, x_cand * m, s_cand, all_idx)
    x_cand, s_cand = x_cand.clone(), s_cand.clone()
    active = all_idx  # images still trialling, as CPU indices
    for i in range(1, config.u_max):
        full = len(active) == B
        sel = (lambda v: v) if full else (lambda v: v[active.to(v.device)])
        m_a, hole_a, s_known_a = sel(m), sel(hole), sel(s_known)
        mu_s_a = sel(mu_s)
        s1 = sel(s_cand)
        for j in range(steps):
            s1 = sde.forward_step(s1, mu_s_a, t - 1 + j, noise(s1, active))
        for z in range(steps - 1, -1, -1):
            s1 = structure_step(s1, t + z, active, s_known_a, m_a, hole_a)
        x_tmp = texture_step(sel(x), sel(mu), t, s1, active)
        d_p = critic(t, x_tmp * m_a, s1, active)
        stats["trials"][active] += 1
        d_n_a = sel(d_n) if full else d_n[active.to(d_n.device)]
        better = (d_p < d_n_a) if config.accept == "lower" else (d_p > d_n_a)
        better_cpu = better.cpu()
        stats["accepted"][active[better_cpu]] += 1
        dev_active = active.to(x_cand.device)
        better_b = better.view(-1, 1, 1, 1)
        if i >= config.u_min:
            new_x, new_s = x_tmp, s1
        else:
            new_x = torch.where(better_b, x_tmp, (sel(x_cand) + x_tmp) / 2)
            new_s = torch.where(better_b, s1, (s1 + sel(s_cand)) / 2)
            better_b = torch.ones_like(better_b)
        if full:
            x_cand = torch.where(better_b, new_x, x_cand)
            s_cand = torch.where(better_b, new_s, s_cand)
        else:
            x_cand[dev_active] = torch.where(better_b, new_x, x_cand[dev_active])
            s_cand[dev_active] = torch.where(better_b, new_s, s_cand[dev_active])
        if i >= config.u_min:
            active = active[better_cpu]
            if len(active) == 0:
                break
    return x_cand, s_cand


@torch.inference_mode()
def sample_irsde(sde: IRSDE, texture_fn, image, mask, generators, hole_fill: float = 0.0, progress: bool = False):
    """Plain IR-SDE inpainting: reverse SDE from x_T = mu + lambda N with an unguided texture net.

    ``texture_fn(x, mu, t, None)``; mu = image*m + hole_fill*(1-m). Returns (result, stats) as
    :func:`sample_strdiffusion` (known pixels pasted back, clamped to [0, 1]).
    """
    _check_inputs(image, mask, generators)
    B, T = image.shape[0], sde.T
    m = mask.to(image.dtype)
    hole = 1 - m
    gens = list(generators)
    stats = _new_stats(B, image.device)
    mu = image * m + hole_fill * hole
    x = sde.start_state(mu, randn_like_per_sample(mu, gens))
    bar = _progress(T, progress, "sampling")
    try:
        for t in range(T, 0, -1):
            eps = texture_fn(x, mu, t, None)
            stats["texture_calls"] += 1
            x = sde.reverse_sde_step(x, mu, sde.score_from_noise(eps, t), t, randn_like_per_sample(x, gens))
            bar.update(1)
    finally:
        bar.close()
    return _composite(image, m, x), stats


# ---------------------------------------------------------------------------------------------
# the reference's loop order, one image at a time (for benchmarks and as a cross-check)


@torch.inference_mode()
def sample_reference_order(sde: IRSDE, structure_fn, texture_fn, critic_fn, image, mask, gray, edge,
                           generators, config: SamplerConfig | None = None, progress: bool = False):
    """:func:`sample_strdiffusion` computed image by image in the reference's exact loop order.

    Written separately from the batched sampler, following the reference's variables (x_original,
    x_updated, xs, xs_t, D_n, D_p), so that the two cross-check each other. Same arguments and
    returns. Like the reference, it scores D_n at every early step, also where no trial follows
    (the batched sampler skips those calls; the critic draws no noise, so results are equal).
    """
    config = config or SamplerConfig()
    _check_inputs(image, mask, generators)
    outs, all_stats = [], []
    for b in range(image.shape[0]):
        out, st = _reference_one(sde, structure_fn, texture_fn, critic_fn, image[b:b + 1], mask[b:b + 1],
                                 gray[b:b + 1], edge[b:b + 1], generators[b], config, progress)
        outs.append(out)
        all_stats.append(st)
    stats = {k: torch.cat([st[k] for st in all_stats]) for k in all_stats[0]}
    return torch.cat(outs), stats


def _reference_one(sde, structure_fn, texture_fn, critic_fn, gt, mask, s_gt, edge, gen, config, progress):
    T = sde.T
    stats = _new_stats(1, gt.device)

    def randn(like):
        return torch.randn(tuple(like.shape), generator=gen, dtype=torch.float32).to(like.device)

    def s_score(x, t):
        stats["structure_calls"] += 1
        return sde.score_from_noise(structure_fn(x, s_mu, t), t)

    def x_score(x, t, guidance):
        stats["texture_calls"] += 1
        return sde.score_from_noise(texture_fn(x, x_mu, t, guidance), t)

    def dis(t, x, s):
        stats["critic_calls"] += 1
        return critic_fn(t, x, s).reshape(-1).float()

    x_mu = gt * mask + config.hole_fill * (1 - mask)
    s_mu = edge * mask
    x_original = x_mu + randn(x_mu) * sde.lam
    xs = s_mu + randn(s_mu) * sde.lam
    bar = _progress(T, progress, "sampling (reference order)")
    t_switch = config.switch_step(T)
    for t in reversed(range(max(t_switch, 1), T + 1)):
        xs_optimum = sde.forward_marginal(s_gt * mask, s_mu * mask, t - 1, randn(s_mu))
        xs = xs_optimum * mask + xs * (1 - mask)
        xs = sde.reverse_sde_step(xs, s_mu, s_score(xs, t), t, randn(xs))
        xs_t = xs
        x_updated = sde.reverse_sde_step(x_original, x_mu, x_score(x_original, t, xs), t, randn(x_original))
        step = 0
        if config.resample and t % config.jump == 0:
            step = config.re
        if step + t > T:
            step = T - t + 1
        if config.resample and critic_fn is not None:
            d_n = dis(t, x_updated * mask, xs)  # every early step, as the reference
        for i in range(1, config.u_max):
            if step == 0:
                break
            xs1 = xs_t
            for j in range(step):
                xs1 = sde.forward_step(xs1, s_mu, t - 1 + j, randn(xs1))
            for z in reversed(range(step)):
                xs1 = xs_optimum * mask + xs1 * (1 - mask)
                xs1 = sde.reverse_sde_step(xs1, s_mu, s_score(xs1, t + z), t + z, randn(xs1))
            x_tmp = sde.reverse_sde_step(x_original, x_mu, x_score(x_original, t, xs1), t, randn(x_original))
            d_p = dis(t, x_tmp * mask, xs1)
            stats["trials"] += 1
            keep = bool(d_p < d_n) if config.accept == "lower" else bool(d_p > d_n)
            if keep:
                stats["accepted"] += 1
                x_updated, xs_t = x_tmp, xs1
            elif i >= config.u_min:
                break
            else:
                x_updated = (x_updated + x_tmp) / 2
                xs_t = (xs1 + xs_t) / 2
        x_original = x_updated
        xs = xs_optimum * mask + xs_t * (1 - mask)
        bar.update(1)
    for t in reversed(range(1, min(t_switch, T + 1))):
        guidance = _late_guidance(x_original, config.late_guidance)
        x_original = sde.reverse_sde_step(x_original, x_mu, x_score(x_original, t, guidance), t, randn(x_original))
        bar.update(1)
    bar.close()
    stats["structure"] = xs.clamp(0, 1)
    return _composite(gt, mask, x_original), stats


# ---------------------------------------------------------------------------------------------
# networks as callables


def net_callables(structure_net=None, texture_net=None, critic_net=None, autocast: str | None = None,
                  channels_last: bool = False):
    """(structure_fn, texture_fn, critic_fn) calling the given networks (None where not given).

    The critic scores each image on its own (minibatch-stddev group 1), as the reference does for
    its batch of one, so a score does not depend on the other images of the batch.
    autocast: None, "bf16" or "fp16" (CUDA only; outputs are returned as float32).
    channels_last: feed inputs in channels-last memory format (convert the networks yourself).
    """
    dtype = {None: None, "none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[autocast]

    def ctx(x):
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=dtype)

    def fmt(x):
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def tt(t, x):
        # t as a (1,) tensor, as the nets make of a python int: a torch.compile'd net then keeps
        # one graph for every step instead of recompiling for each value of t
        return torch.tensor([t], device=x.device)

    def structure_fn(s, mu, t):
        with ctx(s):
            return structure_net(fmt(s), fmt(mu), tt(t, s)).float()

    def texture_fn(x, mu, t, guidance):
        with ctx(x):
            if guidance is None:
                return texture_net(fmt(x), fmt(mu), tt(t, x)).float()
            return texture_net(fmt(x), fmt(mu), tt(t, x), fmt(guidance)).float()

    def critic_fn(t, x, s):
        with ctx(x):
            return critic_net(tt(t, x), fmt(x), fmt(s), stddev_group=1).float()

    return (structure_fn if structure_net is not None else None,
            texture_fn if texture_net is not None else None,
            critic_fn if critic_net is not None else None)


def method_networks(method: str) -> tuple[str, ...]:
    """Network kinds a sampling method needs."""
    return {"strdiffusion": ("structure", "texture", "critic"),
            "strdiffusion_noresample": ("structure", "texture"),
            "irsde": ("irsde",)}[method]


def config_from_args(args, method: str) -> SamplerConfig:
    return SamplerConfig(u_max=args.u_max, u_min=args.u_min, jump=args.jump, re=args.re, switch=args.switch,
                         accept=args.accept, late_guidance=args.late_guidance, hole_fill=args.hole_fill,
                         resample=(method == "strdiffusion"))


def resolve_device(name: str) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def _checkpoint_path(args, net: str, method: str) -> Path:
    given = getattr(args, f"{net}_checkpoint", None)
    if given:
        return Path(given)
    if getattr(args, "checkpoints", None):
        path = Path(args.checkpoints) / f"{net}.pt"
        if not path.is_file():
            raise UserError(f"--method {method} needs the {net} network, but {path} does not exist "
                            f"(--checkpoints {args.checkpoints} should hold {', '.join(n + '.pt' for n in method_networks(method))})")
        return path
    raise UserError(f"--method {method} needs the {net} network: pass --{net}-checkpoint FILE "
                    f"or --checkpoints DIR holding {net}.pt")


def _same_sde(a: dict, b: dict) -> bool:
    import math

    for key in ("T", "max_sigma", "schedule", "eps"):
        if key in a and key in b:
            va, vb = a[key], b[key]
            if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
                if not math.isclose(va, vb, rel_tol=1e-9):
                    return False
            elif va != vb:
                return False
    return True


def load_method_networks(method: str, args, device) -> tuple[dict, IRSDE]:
    """Load the networks ``method`` needs (strictly) and the SDE they were trained with.

    ``--T`` is checked against every checkpoint's stored settings; all networks must agree. The
    authors' bare state dicts carry no settings: then ``--T`` is required and the other SDE
    settings are the reference's (max_sigma 30, cosine, eps 0.005).
    """
    from .checkpoints import load_checkpoint

    expect = {"T": int(args.T)} if getattr(args, "T", None) is not None else None
    nets, sde_settings, sde_from = {}, None, None
    for kind in method_networks(method):
        path = _checkpoint_path(args, kind, method)
        net, meta = load_checkpoint(path, kind=kind, expect_sde=expect, map_location=device)
        stored = meta.get("sde")
        if stored:
            if sde_settings is None:
                sde_settings, sde_from = dict(stored), path
            elif not _same_sde(sde_settings, stored):
                raise UserError(f"checkpoints disagree on the SDE: {sde_from} has {sde_settings}, {path} has {stored}; "
                                "use networks trained with the same sde settings")
        nets[kind] = net
    settings = {"T": 100, "max_sigma": 30.0, "schedule": "cosine", "eps": 0.005}
    settings.update(sde_settings or ({"T": int(args.T)} if expect else {}))
    sde = IRSDE(T=int(settings["T"]), max_sigma=float(settings["max_sigma"]), schedule=settings["schedule"],
                eps=float(settings["eps"]), device=device)
    from .nets.spade import bake_spectral_norm

    for kind, net in nets.items():
        net.requires_grad_(False)
        if kind == "texture":
            bake_spectral_norm(net)  # same weights, without the per-forward normalisation
        if getattr(args, "channels_last", False):
            net.to(memory_format=torch.channels_last)
        if getattr(args, "compile", False):
            nets[kind] = torch.compile(net, dynamic=True)
    return nets, sde


def pad_multiple(nets: dict) -> int:
    """Side lengths the networks need: the UNets' padding multiple and the critic's 8."""
    multiple = 1
    for kind, net in nets.items():
        net = getattr(net, "_orig_mod", net)
        need = _CRITIC_MULTIPLE if kind == "critic" else int(getattr(net, "pad_multiple", 1))
        multiple = max(multiple, need)  # all powers of two
    return multiple


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad an NCHW tensor on the bottom/right to a multiple of ``multiple`` (reflect; replicate if too small)."""
    H, W = x.shape[-2:]
    ph, pw = (-H) % multiple, (-W) % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if ph < H and pw < W else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class _Runner:
    """Loaded networks, SDE and settings for one method; inpaints lists of uint8 images."""

    def __init__(self, args, method: str):
        self.args, self.method = args, method
        self.device = resolve_device(getattr(args, "device", "auto"))
        if self.device.type == "cuda" and getattr(args, "tf32", False):
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        autocast = getattr(args, "autocast", None)
        if autocast not in (None, "none") and self.device.type != "cuda":
            raise UserError(f"--autocast {autocast} needs a CUDA device; this run is on {self.device}")
        self.nets, self.sde = load_method_networks(method, args, self.device)
        self.config = config_from_args(args, method)
        self.fns = net_callables(self.nets.get("structure"), self.nets.get("texture") or self.nets.get("irsde"),
                                 self.nets.get("critic"), autocast=autocast,
                                 channels_last=getattr(args, "channels_last", False))
        self.multiple = pad_multiple(self.nets)
        self.totals = {"images": 0}
        log.info("%s on %s: T=%d, %s", method, self.device, self.sde.T, self.config)

    def run(self, images, masks, structures, ids, bin_name, desc="sampling"):
        """uint8 HxWx3 images, float 1=known HxW masks, (gray, edge) or None -> (uint8 results, structures)."""
        sigma = getattr(self.args, "sigma", 2.0)
        dev = self.device
        H, W = images[0].shape[:2]
        img = torch.stack([torch.from_numpy(np.array(i, dtype=np.uint8)).permute(2, 0, 1) for i in images])
        img = img.to(torch.float32) / 255
        m = torch.stack([torch.from_numpy(np.asarray(k, dtype=np.float32))[None] for k in masks])
        grays, edges = [], []
        if self.method != "irsde":
            from .structure import image_structure

            for image, st in zip(images, structures):
                gray, edge = st if st is not None else image_structure(image, sigma)
                grays.append(torch.from_numpy(np.asarray(gray, dtype=np.float32))[None])
                edges.append(torch.from_numpy(np.asarray(edge, dtype=np.float32))[None])
        pad = lambda t: pad_to_multiple(t, self.multiple).to(dev)  # noqa: E731
        img_p, m_p = pad(img), pad(m)
        gens = make_generators(self.args.seed, ids, bin_name)
        progress = True  # tqdm on stderr
        s_fn, t_fn, c_fn = self.fns
        if self.method == "irsde":
            out, stats = sample_irsde(self.sde, t_fn, img_p, m_p, gens, self.config.hole_fill, progress=progress)
        else:
            out, stats = sample_strdiffusion(self.sde, s_fn, t_fn, c_fn, img_p, m_p, pad(torch.stack(grays)),
                                             pad(torch.stack(edges)), gens, self.config, progress=progress)
        out = out[..., :H, :W]
        results = [to_uint8(o) for o in out]
        structs = None
        if "structure" in stats:
            structs = [(s[0, :H, :W].cpu().numpy() * 255).round().astype(np.uint8) for s in stats["structure"]]
        for key in ("structure_calls", "texture_calls", "critic_calls", "trials"):
            self.totals[key] = self.totals.get(key, 0) + int(stats[key].sum())
        self.totals["images"] += len(images)
        return results, structs

    def summary(self) -> str:
        n = max(self.totals["images"], 1)
        parts = [f"{k.replace('_', ' ')} {v / n:.1f}" for k, v in self.totals.items() if k != "images"]
        return f"{self.totals['images']} images; per image: " + ", ".join(parts)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> uint8 HxWx3, rounding like the reference's tensor2img."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _size_groups(items, batch_size: int):
    """Consecutive chunks of at most ``batch_size`` items of equal image size, order kept."""
    chunk = []
    for item in items:
        if chunk and (len(chunk) == batch_size or chunk[0][1].shape[:2] != item[1].shape[:2]):
            yield chunk
            chunk = []
        chunk.append(item)
    if chunk:
        yield chunk


def _load_structure(structure_dir: Path, image_id: str, shape):
    from PIL import Image

    from .structure import load_gray

    gray_p, edge_p = structure_dir / "gray" / f"{image_id}.png", structure_dir / "edge" / f"{image_id}.png"
    if not gray_p.is_file() or not edge_p.is_file():
        raise UserError(f"structure maps of {image_id} missing in {structure_dir} (expected gray/ and edge/ "
                        f"{image_id}.png); rerun the structure stage")
    gray = load_gray(gray_p)
    with Image.open(edge_p) as im:
        edge = (np.asarray(im.convert("L")) > 127).astype(np.float32)
    if gray.shape != tuple(shape) or edge.shape != tuple(shape):
        raise UserError(f"structure maps of {image_id} in {structure_dir} are {gray.shape[::-1]} but the image is "
                        f"{tuple(shape)[::-1]}; rerun the structure stage")
    return gray, edge


def inpaint_rows(args, rows, out_dir) -> None:
    """Pipeline mode: inpaint the pairs in ``rows`` (image_id, bin, mask) into ``out_dir/<image_id>.png``."""
    out_dir = Path(out_dir)
    runner = _Runner(args, args.method)
    structure_dir = Path(args.structure_dir) if getattr(args, "structure_dir", None) else None
    items = []
    for row in rows.itertuples():
        image = read_image_rgb(Path(args.gt_dir) / f"{row.image_id}.png")
        mask = read_mask(row.mask, size=image.shape[:2])
        st = None
        if structure_dir is not None and args.method != "irsde":
            st = _load_structure(structure_dir, str(row.image_id), image.shape[:2])
        items.append((str(row.image_id), image, mask, st, str(row.bin)))
    batch_size = max(int(getattr(args, "batch_size", 16)), 1)
    for chunk in _size_groups(items, batch_size):
        bins = {c[4] for c in chunk}
        for bin_name in sorted(bins):
            part = [c for c in chunk if c[4] == bin_name]
            results, structs = runner.run([c[1] for c in part], [c[2] for c in part], [c[3] for c in part],
                                          [c[0] for c in part], bin_name)
            for k, (image_id, *_rest) in enumerate(part):
                save_png_atomic(out_dir / f"{image_id}.png", results[k])
                if getattr(args, "save_structure", False) and structs is not None:
                    save_png_atomic(out_dir / "structure" / f"{image_id}.png", structs[k])
    log.info("%s: %s", args.method, runner.summary())


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)


def _user_pairs(args) -> list[tuple[Path, Path, Path]]:
    """(image, mask, output) paths of the user's files; folders are matched by file stem."""
    image, mask = Path(args.image), Path(args.mask) if getattr(args, "mask", None) else None
    if mask is None:
        raise UserError("--image needs --mask (white pixels = holes to fill)")
    if not getattr(args, "out", None):
        raise UserError("--image needs --out (an output PNG, or a folder when --image is a folder)")
    out = Path(args.out)
    if not image.exists():
        raise UserError(f"--image {image} does not exist")
    if not mask.exists():
        raise UserError(f"--mask {mask} does not exist")
    if image.is_dir():
        if not mask.is_dir():
            raise UserError(f"--image {image} is a folder, so --mask must be a folder too (masks matched by file name)")
        if out.suffix.lower() in _IMAGE_SUFFIXES:
            raise UserError(f"--image {image} is a folder, so --out must be a folder, not {out}")
        masks = {p.stem: p for p in _list_images(mask)}
        images = _list_images(image)
        if not images:
            raise UserError(f"--image {image}: no images ({', '.join(_IMAGE_SUFFIXES)}) in the folder")
        missing = [p.name for p in images if p.stem not in masks]
        if missing:
            raise UserError(f"no mask in {mask} for {len(missing)} image(s): {', '.join(missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''} (masks are matched by file name stem)")
        return [(p, masks[p.stem], out / f"{p.stem}.png") for p in images]
    if mask.is_dir():
        cands = [p for p in _list_images(mask) if p.stem == image.stem]
        if not cands:
            raise UserError(f"no mask named {image.stem}.* in {mask}")
        mask = cands[0]
    if out.is_dir() or out.suffix == "":
        out = out / f"{image.stem}.png"
    return [(image, mask, out)]


def inpaint_user_images(args) -> None:
    """Inpaint the user's image(s): ``--image IMG|DIR --mask MASK|DIR --out OUT.png|DIR``.

    Any image size: inputs are reflect-padded on the bottom/right to the networks' multiple and
    the result cropped back. The mask must have the image's size. A mask without holes copies the
    image (with a warning). A mask without known pixels is allowed (the method then generates the
    whole image from its structure prior alone) but warned about, since nothing guides it.
    Structure (gray, Canny edges with ``--sigma``) is computed from the image as given.
    """
    from .inpaint import CLASSICAL, classical_inpaint

    pairs = _user_pairs(args)
    method = getattr(args, "method", "strdiffusion")
    runner = None
    items = []
    for image_p, mask_p, out_p in pairs:
        image = read_image_rgb(image_p)
        mask = read_mask(mask_p, size=image.shape[:2])
        if mask.min() > 0.5:
            warnings.warn(f"{mask_p}: the mask has no hole (no white pixel); {out_p} is a copy of {image_p}",
                          stacklevel=2)
            log.warning("%s: mask has no hole; copying %s", mask_p, image_p)
            save_png_atomic(out_p, image)
            continue
        if mask.max() < 0.5:
            warnings.warn(f"{mask_p}: the mask is all hole (no known pixel); the result is not guided "
                          "by the image at all", stacklevel=2)
            log.warning("%s: mask has no known pixel; the result ignores the image", mask_p)
        if method in CLASSICAL:
            save_png_atomic(out_p, classical_inpaint(method, image, mask))
            continue
        items.append((image_p.stem, image, mask, None, out_p))
    if not items:
        return
    runner = _Runner(args, method)
    batch_size = max(int(getattr(args, "batch_size", 16)), 1)
    for chunk in _size_groups(items, batch_size):
        results, structs = runner.run([c[1] for c in chunk], [c[2] for c in chunk], [None] * len(chunk),
                                      [c[0] for c in chunk], "")
        for k, c in enumerate(chunk):
            save_png_atomic(c[4], results[k])
            if getattr(args, "save_structure", False) and structs is not None:
                save_png_atomic(c[4].parent / "structure" / c[4].name, structs[k])
            log.info("inpainted %s -> %s", c[0], c[4])
    log.info("%s: %s", method, runner.summary())


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the diffusion samplers and of own-image mode (``strdiffusion inpaint``)."""
    d = SamplerConfig()
    g = parser.add_argument_group("diffusion sampling (defaults reproduce the reference)")
    g.add_argument("--seed", type=int, default=0, help="global seed; image noise is seeded from (seed, image id, bin)")
    g.add_argument("--batch-size", type=int, default=16, help="images sampled together (results do not depend on it)")
    g.add_argument("--u-max", type=int, default=d.u_max, help="at most u_max-1 resampling trials per step")
    g.add_argument("--u-min", type=int, default=d.u_min, help="from trial u_min on, a rejected trial stops resampling")
    g.add_argument("--jump", type=int, default=d.jump, help="resample at steps t %% jump == 0")
    g.add_argument("--re", type=int, default=d.re, help="forward re-noising steps of the structure per trial")
    g.add_argument("--switch", type=float, default=d.switch, help="early stage for t >= floor(switch*T)")
    g.add_argument("--accept", choices=ACCEPT, default=d.accept,
                   help="keep a trial when its critic score is lower (reference) or higher than the first sample's")
    g.add_argument("--late-guidance", choices=LATE_GUIDANCE, default=d.late_guidance,
                   help="late-stage guidance: mean over RGB (reference) or BT.709 gray")
    g.add_argument("--hole-fill", type=float, default=d.hole_fill, help="value of hole pixels in the degraded input")
    g.add_argument("--T", type=int, default=None, dest="T",
                   help="diffusion steps the networks were trained with (checked against the checkpoints; "
                        "required for the authors' bare state dicts)")
    g.add_argument("--sigma", type=float, default=2.0,
                   help="Canny sigma of structure computed on the fly (reference test: 2)")
    g.add_argument("--save-structure", action="store_true", help="also write the final structure state to structure/")
    c = parser.add_argument_group("networks")
    for net in ("structure", "texture", "critic", "irsde"):
        c.add_argument(f"--{net}-checkpoint", metavar="FILE", help=f"{net} network checkpoint")
    c.add_argument("--checkpoints", metavar="DIR",
                   help="folder with structure.pt, texture.pt, critic.pt, irsde.pt (explicit --*-checkpoint wins)")
    p = parser.add_argument_group("device and speed (results unchanged unless noted)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--autocast", choices=("none", "bf16", "fp16"), default="none",
                   help="CUDA mixed precision (changes results slightly)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on CUDA (changes results slightly)")
    u = parser.add_argument_group("own images (instead of a pipeline shard)")
    u.add_argument("--image", metavar="IMG|DIR", help="image file, or folder of images (any size)")
    u.add_argument("--mask", metavar="MASK|DIR",
                   help="mask file of the image's size, or folder matched by file name: WHITE = HOLE to fill, black = keep")
