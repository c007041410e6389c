"""Training objectives of the four networks (see :mod:`strdiffusion.train` for the recipes).

Pure functions of networks, the SDE and a batch dict (tensors as :class:`strdiffusion.training_data.
TrainingSet` yields them, stacked): no I/O, no randomness of their own. ``mask`` is 1 on KNOWN pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .sde import degraded

# Per-kind recipes: (hole weight of the loss, smallest training t, value of hole pixels in mu).
RECIPES = {"reference": (10.0, 2, 0.0), "irsde": (1.0, 1, 1.0)}


def recipe(kind: str, name: str = "irsde") -> tuple[float, int, float]:
    """(hole_weight, t_min, hole_fill) of network ``kind``; ``name`` picks the IR-SDE baseline's recipe."""
    if kind == "irsde" and name == "irsde":
        return RECIPES["irsde"]
    return RECIPES["reference"]


def recipe_fill(kind: str, name: str = "irsde", fill: str = "recipe") -> float | str:
    """Hole value of network ``kind``'s mu: its recipe's, or ``"mean"`` (the mean colour of the known
    pixels) where ``fill`` is ``mean``. The structure net's mu is the edge map, whose holes stay 0."""
    if fill == "mean" and kind != "structure":
        return "mean"
    return recipe(kind, name)[2]


def matching_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, loss: str = "l1",
                  hole_weight: float = 10.0) -> torch.Tensor:
    """Reference's x_{t-1} matching loss: per sample mean|known diff| + w mean|hole diff|, batch mean.

    ``mask`` (B, 1, H, W) is 1 on known pixels. Means run over all C*H*W entries of each sample, so
    ``hole_weight`` 1 is the plain mean |pred - target| of IR-SDE's matching loss.
    """
    diff = (lambda a, b: (a - b).abs()) if loss == "l1" else (lambda a, b: (a - b) ** 2)
    known = diff(pred * mask, target * mask).flatten(1).mean(1)
    hole = diff(pred * (1 - mask), target * (1 - mask)).flatten(1).mean(1)
    return (known + hole_weight * hole).mean()


def structure_guidance(sde, batch: dict, t: torch.Tensor, state: str = "optimal") -> torch.Tensor:
    """The structure map S guiding the texture step at t (B, 1, H, W).

    ``optimal``: the optimal x*_{t-1} from a structure sample at t (the reference's texture and
    critic trainers). ``marginal``: a forward-marginal sample of the structure process at t - 1.
    """
    gray, mu_s, noise = batch["gray"], batch["edge"] * batch["mask"], batch["noise_s"]
    if state == "marginal":
        return sde.forward_marginal(gray, mu_s, t - 1, noise)
    s_t = sde.forward_marginal(gray, mu_s, t, noise)
    return sde.optimal_prev(s_t, gray, mu_s, t)


def denoiser_loss(net, sde, batch: dict, kind: str, loss: str = "l1", guidance_state: str = "optimal",
                  hole_weight: float = 10.0, hole_fill: float | str = 0.0, parameterization: str = "noise"):
    """Loss of the structure / texture / irsde UNet on one batch (dict of tensors, see TrainingSet).

    ``noise`` (the reference): the output is the noise, and the loss matches the reverse step's mean to
    the optimal x*_{t-1}. ``x0``: the output is the clean image less mu (x0 = mu + output), and the loss
    is the same hole-weighted distance on x0 itself; the sampler turns it into noise
    (:func:`strdiffusion.core.sampling.as_noise_fn`).
    """
    mask, t = batch["mask"], batch["t"]
    if kind == "structure":
        x0, mu, noise = batch["gray"], batch["edge"] * mask, batch["noise_s"]
    else:
        x0, mu, noise = batch["image"], degraded(batch["image"], mask, hole_fill), batch["noise"]
    xt = sde.forward_marginal(x0, mu, t, noise)
    if kind == "texture":
        out = net(xt, mu, t, guidance=structure_guidance(sde, batch, t, guidance_state))
    else:
        out = net(xt, mu, t)
    if parameterization == "x0":
        return matching_loss(mu + out, x0, mask, loss, hole_weight)
    pred = sde.reverse_sde_step_mean(xt, mu, sde.score_from_noise(out, t), t)
    target = sde.optimal_prev(xt, x0, mu, t)
    return matching_loss(pred, target, mask, loss, hole_weight)


def critic_loss(critic, sde, batch: dict, hole_fill: float | str = 0.0) -> torch.Tensor:
    """Critic loss on one batch: softplus(-real) + softplus(fake) + triplet(anchor, real, fake).
    ``hole_fill``: the texture net's, so that the critic sees the states the sampler makes."""
    mask, t = batch["mask"], batch["t"]
    x0 = batch["image"]
    mu = degraded(x0, mask, hole_fill)
    xt = sde.forward_marginal(x0, mu, t, batch["noise"])
    x_prev = sde.optimal_prev(xt, x0, mu, t)
    s = structure_guidance(sde, batch, t, "optimal")
    real = critic(t, x_prev, s).view(-1, 1)
    fake = critic(t, xt, s).view(-1, 1)
    anchor = critic(t, x_prev * mask + xt * (1 - mask), s).view(-1, 1)
    triplet = F.triplet_margin_loss(anchor, real, fake, margin=1.0, p=2)
    return F.softplus(-real).mean() + F.softplus(fake).mean() + triplet


def objective(net, sde, batch: dict, kind: str, loss: str = "l1", guidance_state: str = "optimal",
              recipe_name: str = "irsde", parameterization: str = "noise", fill: str = "recipe"):
    """Loss of network ``kind`` on one batch; ``fill`` ``mean`` overrides the recipe's hole fill
    (:func:`recipe_fill`)."""
    if kind == "critic":
        return critic_loss(net, sde, batch, recipe_fill(kind, recipe_name, fill))
    return denoiser_loss(net, sde, batch, kind, loss, guidance_state, recipe(kind, recipe_name)[0],
                         recipe_fill(kind, recipe_name, fill), parameterization)
