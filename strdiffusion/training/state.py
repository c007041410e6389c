"""A training run's state: the network, optimiser, gradient scaler and EMA, the loss history and the
learning curve, saved to ``state.pt`` (with ``losses.csv`` and the curve CSV) and resumed from it.

A resumed run continues with the saved weights, optimiser moments, EMA and torch RNG state, so on CPU
it ends with exactly the weights of an uninterrupted one (the data need no state: see
:mod:`strdiffusion.training.data`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn

from strdiffusion.io.files import atomic_path

log = logging.getLogger("strdiffusion.training.trainer")


class EMA:
    """Exponential moving average of a network's parameters (buffers are copied).

    With ``warmup`` the decay of update n (1-based) is min(decay, (1 + n) / (10 + n)), so early
    averages are not dominated by the random initialisation.
    """

    def __init__(self, net: nn.Module, decay: float, warmup: bool = False):
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.params = {k: p.detach().clone() for k, p in net.named_parameters()}
        self.buffers = {k: b.detach().clone() for k, b in net.named_buffers()}

    def current_decay(self) -> float:
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.updates += 1
        names = list(self.params)
        current = dict(net.named_parameters())
        torch._foreach_lerp_([self.params[k] for k in names], [current[k].detach() for k in names],
                             1 - self.current_decay())
        for k, b in net.named_buffers():
            self.buffers[k].copy_(b)

    def state_dict(self, net: nn.Module) -> dict:
        """The EMA as a state dict of ``net`` (same keys, on CPU)."""
        ema = {**self.params, **self.buffers}
        return {k: ema[k].detach().cpu().clone() if k in ema else v.detach().cpu().clone()
                for k, v in net.state_dict().items()}

    def load(self, state: dict, updates: int = 0) -> None:
        self.updates = updates
        for k in self.params:
            self.params[k].copy_(state[k])
        for k in self.buffers:
            if k in state:
                self.buffers[k].copy_(state[k])


def _rng_state() -> dict:
    # The data and noise come from per-item generators; this covers any other torch randomness.
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class Run:
    """One training run's mutable state: network, optimiser, EMA, histories, and their save/load.

    ``job`` gives the files (``state_dir``, ``curve``) and the network kind (:class:`strdiffusion.training.trainer.TrainJob`);
    ``settings`` is what a resumed run must share with the saved state, else it starts afresh."""

    HISTORY = ("iteration", "loss", "lr", "seconds")

    def __init__(self, job, settings: dict, net, optimizer, scaler, ema, rank: int, metrics: tuple):
        self.job, self.net, self.optimizer, self.scaler, self.ema, self.rank = job, net, optimizer, scaler, ema, rank
        self.history = {k: [] for k in self.HISTORY}
        self.curve = {k: [] for k in ("iteration", "seconds", "loss", "lr", *metrics, "val_seconds")}
        self.start, self.elapsed = 0, 0.0
        # Where this run resumed an earlier one: [{"at": iteration, "planned": that run's --iterations}]. A
        # longer resumed run has another lr schedule than its command alone says (milestones are fractions).
        self.resumes: list[dict] = []
        self.settings = settings  # a resumed run must share them with the saved state
        self.path = job.state_dir / "state.pt"

    def resume(self) -> None:
        if not self.path.is_file():
            return
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("settings") != self.settings:
            changed = sorted(k for k in self.settings if state.get("settings", {}).get(k) != self.settings[k])
            if self.rank == 0:
                log.warning("%s was written with other settings (%s); starting from scratch", self.path,
                            ", ".join(changed))
            return
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load(state["ema"], int(state.get("ema_updates", 0)))
        _set_rng_state(state["rng"])
        self.start, self.elapsed = int(state["iteration"]), float(state["seconds"])
        self.history = {k: [float(v) for v in state["history"][k].tolist()] for k in self.HISTORY}
        self.history["iteration"] = [int(v) for v in self.history["iteration"]]
        self.curve = {k: [float(v) for v in state["curve"][k].tolist()] for k in self.curve}
        # "iterations" is absent (None) in states written before it was recorded
        self.resumes = [*state.get("resumes", []), {"at": self.start, "planned": state.get("iterations")}]
        if self.rank == 0:
            log.info("resuming from %s at iteration %d", self.path, self.start)

    def save(self, iteration: int) -> None:
        if self.rank != 0:
            return
        net = self.net
        state = {"iteration": iteration, "seconds": self.elapsed, "settings": self.settings,
                 "iterations": self.job.settings.iterations, "resumes": self.resumes,
                 "net": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                 "optimizer": self.optimizer.state_dict(), "rng": _rng_state(),
                 "history": {k: torch.tensor(v, dtype=torch.float64) for k, v in self.history.items()},
                 "curve": {k: torch.tensor(v, dtype=torch.float64) for k, v in self.curve.items()}}
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            state["ema"], state["ema_updates"] = self.ema.state_dict(net), self.ema.updates
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)
        write_losses(self.job.state_dir / "losses.csv", self.history)
        write_curve(self.job.curve, self.curve)

    def record(self, iteration: int, loss: float, lr: float) -> None:
        for k, v in zip(self.HISTORY, (iteration, loss, lr, self.elapsed)):
            self.history[k].append(v)

    def weights(self) -> dict:
        """The weights to sample from: the EMA when enabled, else the raw weights (reference)."""
        return self.ema.state_dict(self.net) if self.ema is not None else self.net.state_dict()


def write_curve(path: Path, curve: dict) -> None:
    import pandas as pd

    from strdiffusion.io.files import write_csv_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(curve)
    df["iteration"] = df["iteration"].astype(int)
    write_csv_atomic(df, path)


def write_losses(path: Path, history: dict) -> None:
    import pandas as pd

    from strdiffusion.io.files import write_csv_atomic

    write_csv_atomic(pd.DataFrame(history), path)
