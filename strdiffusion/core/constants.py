"""The model core's constants as plain dataclasses: the SDE's (:class:`SDEConfig`) and the reverse
process's (:class:`SamplerConfig`). Their defaults are the reference's.

Kept apart from :mod:`strdiffusion.core.sde` and :mod:`strdiffusion.core.sampling` because it imports
no torch: the stages' settings (:mod:`strdiffusion.settings`) take their defaults from these classes,
and the workflow reads those settings when it parses its rules.
"""
from __future__ import annotations

import dataclasses

SCHEDULES = ("cosine", "linear", "constant")
ACCEPT = ("lower", "higher")
LATE_GUIDANCE = ("rgb_mean", "gray")
PARAMETERIZATIONS = ("noise", "x0")  # what the UNets output: the noise (reference) or x0 - mu
CRITIC_STDDEV_GROUP = 4  # the critic's minibatch-stddev group (the reference's min(4, B)); a larger batch is a multiple of it


@dataclasses.dataclass(frozen=True)
class SDEConfig:
    """The mean-reverting SDE (:class:`strdiffusion.core.sde.IRSDE`): T steps, max_sigma in 0..255 units
    (below 1: lambda itself), the theta schedule (one of :data:`SCHEDULES`), and eps, the share of
    x0 - mu left at t = T."""

    T: int = 100
    max_sigma: float = 30.0
    schedule: str = "cosine"
    eps: float = 0.005


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
    denoise_last: the step at t = 1 returns the texture net's x0 estimate instead of a reverse-SDE step,
    i.e. without the last step's noise (the noise-removal step of score-SDE samplers; reference False).
    resample: False gives ``strdiffusion_noresample`` (no trials, no critic); set by the method.
    """

    u_max: int = 6
    u_min: int = 3
    jump: int = 5
    re: int = 5
    switch: float = 0.4
    accept: str = "lower"
    late_guidance: str = "rgb_mean"
    hole_fill: float = 0.0
    denoise_last: bool = False
    resample: bool = True

    def __post_init__(self):
        for name in ("u_max", "u_min", "jump", "re"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0.0 <= self.switch <= 1.0:
            raise ValueError(f"switch must be in [0, 1], got {self.switch}")
        if self.accept not in ACCEPT:
            raise ValueError(f"accept must be one of {', '.join(ACCEPT)}, got {self.accept!r}")
        if self.late_guidance not in LATE_GUIDANCE:
            raise ValueError(f"late_guidance must be one of {', '.join(LATE_GUIDANCE)}, got {self.late_guidance!r}")

    def switch_step(self, T: int) -> int:
        """First t of the late stage plus one: the early stage is t = T .. int(switch * T)."""
        return int(self.switch * T)  # the reference's int(0.4 * T)

    def trial_steps(self, t: int, T: int) -> int:
        """Forward re-noising steps of a trial at step t (0: no resampling at this t)."""
        if not self.resample or self.u_max <= 1 or t % self.jump != 0:
            return 0
        return min(self.re, T - t + 1)
