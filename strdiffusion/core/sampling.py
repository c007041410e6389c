"""Sampling: the StrDiffusion reverse process and its variants, as pure tensor functions.

Samplers are plain functions of model callables and tensors (no files, no global RNG):

- ``structure_fn(s, mu_s, t) -> eps_hat``          (B, 1, H, W)
- ``texture_fn(x, mu, t, guidance) -> eps_hat``    (B, 3, H, W); ``guidance`` is None for IR-SDE
- ``critic_fn(t, x, s) -> scores``                 (B,)

``t`` is a python int shared by the batch. :func:`net_callables` turns networks into these.
No files, no device choice, no command line: the inpaint stage (:mod:`strdiffusion.inpaint`,
:mod:`strdiffusion.diffusion_runner`) loads the networks and images and calls these functions;
the reference-order loop used to cross-check them is :mod:`strdiffusion.core.sampling_reference`.
A progress bar, where wanted, comes from the caller: ``progress(total=..., desc=...)`` returns an
object with ``update(n)`` and ``close()`` (``tqdm.tqdm`` is one).

Conventions: images are float32 NCHW in [0, 1]; ``mask`` is (B, 1, H, W), 1 = KNOWN pixel,
0 = hole (mask FILES are white = hole, see :mod:`strdiffusion.io.images`); ``gray`` and ``edge`` are
(B, 1, H, W) structure maps of the image (only their known part is used).

Randomness: image b draws every Gaussian from ``generators[b]`` (a CPU ``torch.Generator``), in
the order the reference draws them for that image alone (texture start, structure start, then per
step: known-structure marginal, structure step, texture step, and for each resampling trial its
``re`` forward and ``re`` reverse structure steps and one texture step). Images that stopped
trialling draw nothing, so a batch gives the same result as sampling its images one by one.
"""
from __future__ import annotations

import contextlib

import torch

from .constants import PARAMETERIZATIONS, SamplerConfig
from .sde import IRSDE, degraded, randn_like_per_sample
from .seeds import seed_for

# skimage.color.rgb2gray weights (ITU-R BT.709), for late_guidance="gray"
_GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)


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


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, progress, desc: str):
    """The caller's progress bar (module docstring), or one that shows nothing when ``progress`` is None."""
    return progress(total=total, desc=desc) if progress else _NoBar()


# ---------------------------------------------------------------------------------------------
# batched samplers


@torch.inference_mode()
def sample_strdiffusion(sde: IRSDE, structure_fn, texture_fn, critic_fn, image, mask, gray, edge,
                        generators, config: SamplerConfig | None = None, progress=None):
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
        ``trials`` and ``accepted`` (trials kept because the critic preferred them), per-image (B,)
        float ``clipped`` (:func:`clipped_share`) and the final ``structure`` state.
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

    mu = degraded(image, m, config.hole_fill)
    mu_s = edge * m
    x0_s = gray * m
    mu_s_known = mu_s * m

    x = sde.start_state(mu, noise(mu, all_idx))
    s = sde.start_state(mu_s, noise(mu_s, all_idx))

    def texture_step(x_, mu_, t, guidance, idx):
        eps = texture_fn(x_, mu_, t, guidance)
        stats["texture_calls"][idx] += 1
        return _reverse_step(sde, x_, mu_, eps, t, noise(x_, idx), config.denoise_last)

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
    stats["clipped"] = clipped_share(x, m)
    return _composite(image, m, x), stats


CLIP_TOLERANCE = 0.5 / 255  # half a grey level: a value this close to [0, 1] is saved unchanged by the clamp


def clipped_share(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Per image (B,): share of hole pixels whose raw final state lies outside [0, 1] in any channel
    (or is not finite), before clamping: the divergence diagnostic of the tables. ``m`` is 1 = known.
    Values within :data:`CLIP_TOLERANCE` of the range round to the same 8-bit value as their clamp
    and do not count (float rounding of an exact 0 is not divergence)."""
    hole = (m <= 0.5).squeeze(1)
    outside = ~((x >= -CLIP_TOLERANCE) & (x <= 1 + CLIP_TOLERANCE)).all(1)
    return ((outside & hole).flatten(1).sum(1).float() / hole.flatten(1).sum(1).clamp(min=1)).cpu()


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
def _reverse_step(sde: IRSDE, x, mu, eps, t: int, noise, denoise_last: bool = False):
    """One reverse-SDE step from t with predicted noise ``eps``; with ``denoise_last``, the step at t = 1
    returns the x0 estimate instead (no noise is added)."""
    if denoise_last and t == 1:
        return sde.x0_from_noise(x, mu, eps, t)
    return sde.reverse_sde_step(x, mu, sde.score_from_noise(eps, t), t, noise)


def sample_irsde(sde: IRSDE, texture_fn, image, mask, generators, hole_fill: float | str = 0.0,
                 progress=None, denoise_last: bool = False):
    """Plain IR-SDE inpainting: reverse SDE from x_T = mu + lambda N with an unguided texture net.

    ``texture_fn(x, mu, t, None)``; mu = :func:`~strdiffusion.core.sde.degraded` (image, m, hole_fill);
    ``denoise_last``: as :attr:`SamplerConfig.denoise_last`.
    Returns (result, stats) as
    :func:`sample_strdiffusion` (known pixels pasted back, clamped to [0, 1]).
    """
    _check_inputs(image, mask, generators)
    B, T = image.shape[0], sde.T
    m = mask.to(image.dtype)
    hole = 1 - m
    gens = list(generators)
    stats = _new_stats(B, image.device)
    mu = degraded(image, m, hole_fill)
    x = sde.start_state(mu, randn_like_per_sample(mu, gens))
    bar = _progress(T, progress, "sampling")
    try:
        for t in range(T, 0, -1):
            eps = texture_fn(x, mu, t, None)
            stats["texture_calls"] += 1
            x = _reverse_step(sde, x, mu, eps, t, randn_like_per_sample(x, gens), denoise_last)
            bar.update(1)
    finally:
        bar.close()
    stats["clipped"] = clipped_share(x, m)
    return _composite(image, m, x), stats


# ---------------------------------------------------------------------------------------------
# networks as callables


def as_noise_fn(fn, sde: IRSDE, parameterization: str = "noise"):
    """The noise predictor the reverse process needs, from a denoiser callable ``fn(x, mu, t, *rest)``.

    ``noise`` (the reference's networks): ``fn`` itself. ``x0``: ``fn`` gives x0 - mu, and the noise is
    the one that would have made x_t from that x0, (x_t - mu_bar(x0)) / sigma_bar_t. Errors of an x0
    output are not multiplied by 1/eps on the way back, which makes small-budget networks usable.
    """
    if parameterization == "noise":
        return fn
    if parameterization != "x0":
        raise ValueError(f"parameterization must be one of {', '.join(PARAMETERIZATIONS)}, got {parameterization!r}")

    def noise(x, mu, t, *rest):
        return sde.real_noise(x, mu + fn(x, mu, t, *rest), mu, t)

    return noise


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
