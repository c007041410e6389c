"""The mean-reverting SDE of IR-SDE (Luo et al. 2023), shared by the structure and texture processes.

    dx = theta_t (mu - x) dt + sigma_t dW,   sigma_t^2 = 2 lambda^2 theta_t,   lambda = max_sigma / 255

Pure tensor math: no I/O, no networks, no hidden random state. Every function that needs Gaussian
noise takes it as an argument (``noise``), so that callers decide where it comes from (see
:func:`randn_like_per_sample` for per-image reproducible noise).

Conventions
- Timesteps are integers t = 0..T; t = 0 is the clean state and never a step.
- ``t`` may be a python int, a 0-d integer tensor, or a per-sample integer tensor of shape (B,) or
  (B, 1, 1, 1). A per-sample ``t`` gives schedule values of shape (B, 1, 1, 1) that broadcast over
  NCHW images; a scalar ``t`` gives 0-d values.
- Images are float tensors in the same units as ``x0`` and ``mu`` (here [0, 1]); ``max_sigma`` is
  given in 0..255 units, as in the reference configs (30 -> lambda = 30/255); a value below 1 is
  taken as lambda itself, as the reference does.

Floating-point operations are written in the same order as the reference implementation
(``utils/sde_utils.py`` of htyjers/StrDiffusion), so that results agree to the last bit on CPU.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .constants import SCHEDULES, SDEConfig


def _theta_schedule(name: str, T: int) -> torch.Tensor:
    """theta_t for t = 0..T (T + 1 float32 values)."""
    if name == "cosine":
        # Cosine schedule on T + 2 points, truncated at both ends (Nichol & Dhariwal, s = 0.008).
        n = T + 2
        s = 0.008
        x = torch.linspace(0, n, n + 1, dtype=torch.float32)
        a = torch.cos(((x / n) + s) / (1 + s) * math.pi * 0.5) ** 2
        a = a / a[0]
        return 1 - a[1:-1]
    if name == "linear":
        n = T + 1
        scale = 1000 / n
        return torch.linspace(scale * 0.0001, scale * 0.02, n, dtype=torch.float32)
    if name == "constant":
        return torch.ones(T + 1, dtype=torch.float32)
    raise ValueError(f"unknown theta schedule {name!r}; expected one of {', '.join(SCHEDULES)}")


class IRSDE:
    """Schedule and step functions of the mean-reverting SDE.

    Attributes (float32 tensors on ``device``, shape (T + 1,), indexed by t = 0..T):
    ``thetas``, ``sigmas``, ``thetas_cumsum`` (cumsum minus theta_0, so it is 0 at t = 0) and
    ``sigma_bars`` (std of the forward marginal). ``dt`` is a 0-d float32 tensor chosen so that
    exp(-thetas_cumsum[T] * dt) = eps, i.e. at t = T only a fraction ``eps`` of x0 - mu is left.
    ``lam`` is lambda, the stationary std (a python float): max_sigma / 255, or max_sigma itself when
    it is below 1 (the reference rule). The defaults are :class:`~strdiffusion.core.constants.SDEConfig`'s.
    """

    def __init__(self, T: int = SDEConfig.T, max_sigma: float = SDEConfig.max_sigma,
                 schedule: str = SDEConfig.schedule, eps: float = SDEConfig.eps, device=None):
        if int(T) != T or T < 1:
            raise ValueError(f"T must be a positive integer, got {T!r}")
        if not max_sigma > 0:
            raise ValueError(f"max_sigma must be > 0 (0..255 units, or a value below 1 used as is), got {max_sigma!r}")
        if not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps!r}")
        self.T = int(T)
        self.max_sigma = float(max_sigma)
        self.schedule = schedule
        self.eps = float(eps)
        # As the reference: a value >= 1 is in 0..255 units, one below 1 is already the std in [0, 1] units.
        self.lam = self.max_sigma / 255 if self.max_sigma >= 1 else self.max_sigma
        self.device = torch.device(device) if device is not None else torch.device("cpu")

        lam = self.lam
        thetas = _theta_schedule(schedule, self.T)
        sigmas = torch.sqrt(lam**2 * 2 * thetas)
        thetas_cumsum = torch.cumsum(thetas, dim=0) - thetas[0]
        dt = -1 / thetas_cumsum[-1] * math.log(self.eps)
        sigma_bars = torch.sqrt(lam**2 * (1 - torch.exp(-2 * thetas_cumsum * dt)))

        self.thetas = thetas.to(self.device)
        self.sigmas = sigmas.to(self.device)
        self.thetas_cumsum = thetas_cumsum.to(self.device)
        self.sigma_bars = sigma_bars.to(self.device)
        self.dt = dt.to(self.device)
        # The reference scales the dispersion by math.sqrt of the float32 dt, taken as a python double.
        self._sqrt_dt = math.sqrt(float(dt))

    def __repr__(self) -> str:
        return (f"IRSDE(T={self.T}, max_sigma={self.max_sigma}, schedule={self.schedule!r}, "
                f"eps={self.eps}, device={self.device})")

    def to(self, device) -> "IRSDE":
        """Move the schedule tensors to ``device`` (in place); returns self."""
        self.device = torch.device(device)
        for name in ("thetas", "sigmas", "thetas_cumsum", "sigma_bars", "dt"):
            setattr(self, name, getattr(self, name).to(self.device))
        return self

    def settings(self) -> dict:
        """Constructor settings, stored in checkpoints: {"T", "max_sigma", "schedule", "eps"}."""
        return {"T": self.T, "max_sigma": self.max_sigma, "schedule": self.schedule, "eps": self.eps}

    # ------------------------------------------------------------------ indexing

    def _index(self, t):
        """A python int stays an int; tensors go to the schedule's device, per-sample ones to (B,1,1,1)."""
        if isinstance(t, torch.Tensor):
            if t.dtype.is_floating_point or t.dtype == torch.bool:
                raise TypeError(f"timesteps must be integers, got a {t.dtype} tensor")
            t = t.to(self.device)
            if t.dim() == 0:
                return t
            return t.reshape(-1, 1, 1, 1)
        if isinstance(t, bool) or int(t) != t:
            raise TypeError(f"timestep must be an integer, got {t!r}")
        return int(t)

    def sigma_bar(self, t):
        """Std of the forward marginal x_t | x0."""
        return self.sigma_bars[self._index(t)]

    def weights(self, t):
        """exp(-thetas_cumsum[t] dt): the fraction of x0 - mu left at time t."""
        return torch.exp(-self.thetas_cumsum[self._index(t)] * self.dt)

    # ------------------------------------------------------------------ forward process

    def mu_bar(self, x0, mu, t):
        """Mean of the forward marginal: mu + (x0 - mu) exp(-thetas_cumsum[t] dt)."""
        return mu + (x0 - mu) * torch.exp(-self.thetas_cumsum[self._index(t)] * self.dt)

    def forward_marginal(self, x0, mu, t, noise):
        """A sample of x_t | x0: mu_bar + sigma_bar * noise (``noise`` ~ N(0, I), x0's shape)."""
        t = self._index(t)
        return noise * self.sigma_bars[t] + self.mu_bar(x0, mu, t)

    def drift(self, x, mu, t):
        return self.thetas[self._index(t)] * (mu - x) * self.dt

    def dispersion(self, x, t, noise):
        """sigma_t sqrt(dt) * noise; ``x`` is unused and kept for the reference's signature."""
        return self.sigmas[self._index(t)] * (noise * self._sqrt_dt)

    def forward_step(self, x, mu, t, noise):
        """One Euler-Maruyama step of the forward SDE, from t - 1 to t."""
        t = self._index(t)
        return x + self.drift(x, mu, t) + self.dispersion(x, t, noise)

    def start_state(self, mu, noise):
        """x_T for sampling: mu + lambda * noise."""
        return mu + noise * self.lam

    # ------------------------------------------------------------------ scores and noise

    def score_from_noise(self, eps_hat, t):
        """Score from the network's noise prediction: -eps_hat / sigma_bar_t."""
        return -eps_hat / self.sigma_bar(t)

    def noise_from_score(self, score, t):
        return -score * self.sigma_bar(t)

    def real_noise(self, xt, x0, mu, t):
        """The noise that produced x_t from x0: (x_t - mu_bar) / sigma_bar."""
        t = self._index(t)
        return (xt - self.mu_bar(x0, mu, t)) / self.sigma_bars[t]

    def x0_from_noise(self, xt, mu, noise, t):
        """The x0 that would have made x_t with ``noise``: mu + (x_t - mu - sigma_bar noise) / weight."""
        return mu + (xt - mu - self.sigma_bar(t) * noise) / self.weights(t)

    def real_score(self, xt, x0, mu, t):
        t = self._index(t)
        return -(xt - self.mu_bar(x0, mu, t)) / self.sigma_bars[t] ** 2

    # ------------------------------------------------------------------ reverse process

    def sde_reverse_drift(self, x, mu, score, t):
        t = self._index(t)
        return (self.thetas[t] * (mu - x) - self.sigmas[t] ** 2 * score) * self.dt

    def ode_reverse_drift(self, x, mu, score, t):
        t = self._index(t)
        return (self.thetas[t] * (mu - x) - 0.5 * self.sigmas[t] ** 2 * score) * self.dt

    def reverse_sde_step_mean(self, x, mu, score, t):
        """Mean of one reverse SDE step from t to t - 1."""
        return x - self.sde_reverse_drift(x, mu, score, t)

    def reverse_sde_step(self, x, mu, score, t, noise):
        """One reverse SDE step from t to t - 1 (``noise`` ~ N(0, I), x's shape)."""
        t = self._index(t)
        return x - self.sde_reverse_drift(x, mu, score, t) - self.dispersion(x, t, noise)

    def reverse_ode_step(self, x, mu, score, t):
        return x - self.ode_reverse_drift(x, mu, score, t)

    def optimal_prev(self, xt, x0, mu, t):
        """x*_{t-1}: the mean of x_{t-1} given x_t and x0 (the reference's ``reverse_optimum_step``).

        With A = exp(-theta_t dt), B = exp(-thetas_cumsum[t] dt), C = exp(-thetas_cumsum[t-1] dt):
        A (1 - C^2)/(1 - B^2) (x_t - mu) + C (1 - A^2)/(1 - B^2) (x0 - mu) + mu. Needs t >= 1.
        """
        t = self._index(t)
        if isinstance(t, int) and t < 1:
            raise ValueError(f"optimal_prev needs t >= 1, got {t}")
        A = torch.exp(-self.thetas[t] * self.dt)
        B = torch.exp(-self.thetas_cumsum[t] * self.dt)
        C = torch.exp(-self.thetas_cumsum[t - 1] * self.dt)
        term1 = A * (1 - C**2) / (1 - B**2)
        term2 = C * (1 - A**2) / (1 - B**2)
        return term1 * (xt - mu) + term2 * (x0 - mu) + mu


def randn_like_per_sample(x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Standard normal noise of ``x``'s shape and dtype, on ``x.device``; sample b drawn from ``generators[b]``.

    The generators are CPU generators, so a given image gets the same noise whatever the batch it is
    in, the batch size or the device.
    """
    if len(generators) != x.shape[0]:
        raise ValueError(f"need one generator per sample: batch is {x.shape[0]}, got {len(generators)} generators")
    dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    if x.device.type == "cpu":
        return torch.stack([torch.randn(tuple(x.shape[1:]), generator=g, dtype=dtype) for g in generators])
    # Drawn into pinned memory and copied without blocking: the host does not wait for the GPU at every
    # step (the pinned block is not reused before the copy ends: torch's host allocator records the stream).
    noise = torch.empty(tuple(x.shape), dtype=dtype, pin_memory=True)
    for b, g in enumerate(generators):
        torch.randn(tuple(x.shape[1:]), generator=g, dtype=dtype, out=noise[b])
    return noise.to(x.device, non_blocking=True)


def degraded(image: torch.Tensor, known: torch.Tensor, fill) -> torch.Tensor:
    """The degraded input mu: ``image`` on its known pixels (``known`` 1), holes at ``fill``.

    ``fill`` is a value (the reference: 0; IR-SDE's recipe: 1) or ``"mean"``: each image's mean colour
    over its known pixels, per channel (0.5 where an image has none), so that mu is the mean-colour fill.
    """
    if fill == "mean":
        w = known.expand_as(image)
        count = w.sum(dim=(-2, -1), keepdim=True)
        value = (image * w).sum(dim=(-2, -1), keepdim=True) / count.clamp(min=1)
        value = torch.where(count > 0, value, torch.full_like(value, 0.5))
    else:
        value = float(fill)
    return image * known + value * (1 - known)
