"""The reference's StrDiffusion loop order, one image at a time: a cross-check of the batched sampler.

Used by the tests and the benchmarks only. It is written separately from
:func:`strdiffusion.core.sampling.sample_strdiffusion`, following the reference's variable names, so that
the two implementations check each other; conventions are those of :mod:`strdiffusion.core.sampling`.
"""
from __future__ import annotations

import torch

from .constants import SamplerConfig
from .sampling import _check_inputs, _composite, _late_guidance, _new_stats, _progress
from .sde import IRSDE


@torch.inference_mode()
def sample_reference_order(sde: IRSDE, structure_fn, texture_fn, critic_fn, image, mask, gray, edge,
                           generators, config: SamplerConfig | None = None, progress=None):
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
