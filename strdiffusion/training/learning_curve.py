"""Learning curves: score a network under training on a fixed validation set.

The validation set is a few held-out *training* crops (the trainer leaves them out of its batches)
with fixed masks and fixed noise, so every evaluation of a run sees the same inputs and the curve
shows the network alone changing. The test split is never touched.

- ``structure``: a full reverse run of the structure process (x_T = edge*m + lambda N), scored on the
  hole of the gray map.
- ``texture``: a full reverse run guided by the ground-truth structure: at step t the guidance is the
  structure's optimal step x*_{t-1} from a forward sample of the true gray map at t (the state the
  texture net sees in training).
- ``irsde``: a full unguided reverse run.
- ``critic``: scores of real states D(t, x*_{t-1}) against fake ones D(t, x_t) at fixed (t, noise);
  ``auc`` is the share of (real, fake) pairs the critic orders correctly (0.5 = chance).

Denoisers report ``hole_psnr`` (dB over hole pixels, [0, 1] data range, mean over images), ``ssim``
(whole composited uint8 image, mean over images) and ``clipped`` (share of hole values of the raw
final state outside [0, 1], the divergence diagnostic). ``mask`` is 1 on known pixels.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from strdiffusion.core.sampling import as_noise_fn, clipped_share
from strdiffusion.core.sde import IRSDE, degraded, randn_like_per_sample
from strdiffusion.core.seeds import seed_for

DENOISER_METRICS = ("hole_psnr", "ssim", "clipped")
CRITIC_METRICS = ("auc", "accuracy")


def metric_names(kind: str) -> tuple[str, ...]:
    return CRITIC_METRICS if kind == "critic" else DENOISER_METRICS


def validation_batch(dataset, indices, seed: int, T: int, t_min: int = 2) -> dict:
    """Fixed validation tensors from ``dataset`` (a TrainingSet's reader) for the images ``indices``.

    Each image is centre-cropped to the working size and paired with a mask of the training pool
    chosen by a seeded permutation; t for the critic cycles through t_min..T.
    """
    g = torch.Generator().manual_seed(seed_for(seed, "validation"))
    mask_order = torch.randperm(len(dataset.masks), generator=g).tolist()
    s = dataset.size
    items = {"image": [], "gray": [], "edge": [], "mask": []}
    for j, i in enumerate(indices):
        image, gray, edge = dataset.read(i)
        H, W = gray.shape
        top, left = (H - s) // 2, (W - s) // 2
        items["image"].append(torch.from_numpy(np.ascontiguousarray(image[top:top + s, left:left + s])).permute(2, 0, 1))
        items["gray"].append(torch.from_numpy(np.ascontiguousarray(gray[top:top + s, left:left + s]))[None])
        items["edge"].append(torch.from_numpy(np.ascontiguousarray(edge[top:top + s, left:left + s]))[None])
        items["mask"].append(torch.from_numpy(dataset.masks[mask_order[j % len(mask_order)]])[None])
    batch = {k: torch.stack(v).float().contiguous() for k, v in items.items()}
    B = len(indices)
    span = T - t_min + 1
    batch["t"] = torch.tensor([t_min + (j * 7) % span for j in range(B)], dtype=torch.long)
    batch["noise"] = torch.randn((B, 3, s, s), generator=g)
    batch["noise_s"] = torch.randn((B, 1, s, s), generator=g)
    batch["seed"] = seed
    return batch


def _generators(seed: int, n: int, what: str) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed_for(seed, "validation", what, i)) for i in range(n)]


def _reverse(sde: IRSDE, eps_fn, mu: torch.Tensor, gens) -> torch.Tensor:
    """Full reverse SDE from x_T = mu + lambda N with noise predictor ``eps_fn(x, mu, t)``; returns the raw
    (unclamped) x_0."""
    x = sde.start_state(mu, randn_like_per_sample(mu, gens))
    for t in range(sde.T, 0, -1):
        x = sde.reverse_sde_step(x, mu, sde.score_from_noise(eps_fn(x, mu, t), t), t, randn_like_per_sample(x, gens))
    return x


def _t(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def _to_u8_rgb(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> uint8 HxWx3 (a gray map repeated), as metrics.ssim takes."""
    u8 = np.round(x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    return np.repeat(u8, 3, -1) if u8.shape[-1] == 1 else u8


def hole_scores(raw: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict:
    """hole PSNR, SSIM and clipped share of a raw (B, C, H, W) result against ``target`` in [0, 1].

    ``clipped`` is the sampler's own diagnostic (:func:`strdiffusion.core.sampling.clipped_share`, the
    share of hole pixels outside [0, 1]), averaged over the images, as the tables report it.
    """
    from strdiffusion.metrics.formulas import ssim

    out = torch.where(mask > 0.5, target, raw.clamp(0, 1))
    hole = (mask <= 0.5).expand_as(raw)
    psnrs, ssims = [], []
    for b in range(raw.shape[0]):
        mse = float(((out[b] - target[b]) ** 2)[hole[b]].mean()) if hole[b].any() else 0.0
        psnrs.append(10 * math.log10(1 / mse) if mse > 0 else 99.0)
        a, b_ = _to_u8_rgb(out[b]), _to_u8_rgb(target[b])
        ssims.append(ssim(a, b_) if min(a.shape[:2]) >= 11 else float("nan"))
    return {"hole_psnr": float(np.mean(psnrs)), "ssim": float(np.nanmean(ssims)),
            "clipped": float(clipped_share(raw, mask).mean())}


@torch.no_grad()
def evaluate(kind: str, net, sde: IRSDE, batch: dict, device, hole_fill: float | str = 0.0,
             parameterization: str = "noise") -> dict:
    """Validation metrics of ``net`` (a structure / texture / irsde UNet or the critic) on ``batch``;
    ``parameterization``: what the UNet outputs (noise, or x0 - mu; see :mod:`strdiffusion.core.objectives`)."""
    was_training = net.training
    net.eval()
    try:
        b = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        if kind == "critic":
            return _critic_scores(net, sde, b, hole_fill)
        mask, seed, B = b["mask"], b["seed"], b["mask"].shape[0]
        mu_s = b["edge"] * mask
        if kind == "structure":
            eps = as_noise_fn(lambda x, mu_, t: net(x, mu_, _t(t, x)), sde, parameterization)
            raw = _reverse(sde, eps, mu_s, _generators(seed, B, "s"))
            return hole_scores(raw.cpu(), b["gray"].cpu(), mask.cpu())
        image = b["image"]
        mu = degraded(image, mask, hole_fill)
        if kind == "texture":
            gray, noise_s = b["gray"], b["noise_s"]

            def out_fn(x, mu_, t):
                s_t = sde.forward_marginal(gray, mu_s, t, noise_s)
                return net(x, mu_, _t(t, x), guidance=sde.optimal_prev(s_t, gray, mu_s, t))
        else:
            def out_fn(x, mu_, t):
                return net(x, mu_, _t(t, x))
        raw = _reverse(sde, as_noise_fn(out_fn, sde, parameterization), mu, _generators(seed, B, "x"))
        return hole_scores(raw.cpu(), image.cpu(), mask.cpu())
    finally:
        net.train(was_training)


def _critic_scores(critic, sde: IRSDE, b: dict, hole_fill: float | str = 0.0) -> dict:
    from strdiffusion.core.objectives import structure_guidance

    mask, t, x0 = b["mask"], b["t"], b["image"]
    mu = degraded(x0, mask, hole_fill)
    xt = sde.forward_marginal(x0, mu, t, b["noise"])
    x_prev = sde.optimal_prev(xt, x0, mu, t)
    s = structure_guidance(sde, b, t, "optimal")
    real = critic(t, x_prev, s).reshape(-1).cpu()
    fake = critic(t, xt, s).reshape(-1).cpu()
    auc = float(((real[:, None] > fake[None, :]).float() + 0.5 * (real[:, None] == fake[None, :]).float()).mean())
    accuracy = float(torch.cat([real > 0, fake < 0]).float().mean())
    return {"auc": auc, "accuracy": accuracy}
