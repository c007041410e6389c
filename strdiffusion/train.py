"""Training stage: the structure, texture, critic and IR-SDE networks (spec §4).

One trainer for all four kinds; only the objective differs:

- ``structure``: x0 = gray, mu = edge * mask (1 channel). The UNet predicts the noise of x_t; the
  loss matches the predicted reverse-step mean p to the optimal x*_{t-1} = q.
- ``texture``: x0 = RGB, mu = RGB * mask (holes 0); the SPADE guidance is the structure's optimal
  step x*_{t-1} from a structure sample at t (x0 = gray, mu = edge * mask), as the reference texture
  trainer does (``--guidance-state marginal`` uses a forward sample of the structure at t - 1 instead).
- ``irsde``: the texture UNet without guidance (the IR-SDE baseline). ``--recipe irsde`` (default) is
  IR-SDE's own inpainting recipe: unweighted L1 matching loss, t in {1..T}, holes of mu filled with 1
  (white); ``--recipe texture`` trains it like the texture net (10x hole weight, holes 0, t in {2..T}).
- ``critic``: real = D(t, x*_{t-1}, S), fake = D(t, x_t, S), S = the structure's optimal x*_{t-1};
  loss = mean softplus(-real) + mean softplus(fake) + TripletMargin(anchor = D(t, x*_{t-1} m + x_t (1-m), S),
  real, fake) (margin 1, p 2, scores as (B, 1) vectors, as in the reference).

Loss of the denoisers, per sample: mean(|p m - q m|) + w mean(|p (1-m) - q (1-m)|), batch mean
(squared differences with ``--loss l2``), w = 10 (reference) or 1 (IR-SDE recipe, a plain L1).
``m`` is 1 on KNOWN pixels; mask FILES are white = hole. Timesteps are uniform in {2, ..., T}
({1, ..., T} for the IR-SDE recipe).

Defaults follow the reference code: no EMA (the reference builds one but never updates it and samples
the raw weights), Adam, a step learning-rate schedule whose milestones are FRACTIONS of
``--iterations`` (the reference halves at 2M, 4M, 6M of 8M: 0.25, 0.5, 0.75). Options the reference
lacks stay available: ``--ema`` with ``--ema-warmup`` (decay min(beta, (1+n)/(10+n))), ``--warmup``
(linear lr warm-up over a fraction of the run), ``--grad-clip``.

Learning curves: every ``--checkpoint-every`` iterations the network is scored on ``--val-count``
held-out training crops with fixed masks and noise (:mod:`strdiffusion.validation`); the rows go to
``--curve FILE.csv`` (iteration, seconds, loss, lr, metrics). A non-finite loss stops the run with a
one-line error before the optimiser step, after saving the last good state.

Reproducibility: everything random in iteration i (which images and masks, crops, flips, t, noise)
comes from generators seeded by (seed, kind, i, slot), so the data order needs no state, a resumed
run ends with exactly the weights of an uninterrupted one (on CPU), and a DDP run sees the same
global batches as a single process (rank r takes its slice of every global batch).

Outputs: ``--out FILE.pt`` (final weights, the EMA when enabled, via ``checkpoints.save_checkpoint``;
the curve rides along in its metadata),
``FILE_loss.png`` (loss curve) and, in ``--state-dir``, ``state.pt`` (full training state, written
every ``--checkpoint-every`` iterations; re-running the same command resumes from it) and
``losses.csv`` (iteration, loss, lr, seconds).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .utils import UserError, atomic_path, seed_for
from .objectives import objective, recipe
from .training_data import IterationBatches, build_dataset

log = logging.getLogger("strdiffusion.train")

KINDS = ("structure", "texture", "critic", "irsde")


# ---------------------------------------------------------------------- EMA, lr and state

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


def milestone_iterations(fractions, iterations: int) -> list[int]:
    """Milestones given as fractions of the run, as iteration numbers (at least 1)."""
    return [max(1, int(round(f * iterations))) for f in fractions]


def learning_rate(base: float, iteration: int, iterations: int, fractions=(), gamma: float = 0.5,
                  warmup: float = 0.0) -> float:
    """lr of 1-based ``iteration``: base * gamma^(milestones passed before it) * linear warm-up.

    A milestone m halves (gamma) the lr from iteration m + 1 on, as torch's MultiStepLR stepped once
    per iteration; the warm-up ramps linearly over the first ``warmup`` fraction of the run.
    """
    passed = sum(1 for m in milestone_iterations(fractions, iterations) if m <= iteration - 1)
    lr = base * gamma ** passed
    ramp = int(round(warmup * iterations))
    if ramp > 0 and iteration <= ramp:
        lr *= iteration / ramp
    return lr


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


# ---------------------------------------------------------------------- command line

def parse_args(argv):
    p = argparse.ArgumentParser(prog="strdiffusion train", description=__doc__.splitlines()[0])
    p.add_argument("--net", required=True, choices=KINDS, help="which network to train")
    p.add_argument("--images", required=True, type=Path, help="folder of training images (RGB PNG)")
    p.add_argument("--structure", required=True, type=Path, help="structure folder of the training images (gray/, edge/)")
    p.add_argument("--masks", required=True, type=Path, help="folder of training masks (white = hole)")
    p.add_argument("--out", required=True, type=Path, help="final checkpoint (.pt)")
    p.add_argument("--state-dir", required=True, type=Path, help="folder of the resumable state and losses.csv")
    p.add_argument("--curve", type=Path, default=None,
                   help="learning-curve CSV (default: curve.csv in --state-dir)")
    p.add_argument("--size", type=int, default=0, help="working size in px (random crops); 0 = the images' size")
    p.add_argument("--nf", type=int, default=64, help="UNet base width (paper 64)")
    p.add_argument("--depth", type=int, default=4, help="UNet depth (paper 4)")
    p.add_argument("--critic-ngf", type=int, default=64, help="critic base width (paper 64)")
    p.add_argument("--attn-heads", type=int, default=4, help="UNet attention heads (paper 4)")
    p.add_argument("--attn-dim-head", type=int, default=32, help="UNet channels per attention head (paper 32)")
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--max-sigma", type=float, default=30.0)
    p.add_argument("--schedule", default="cosine", choices=("cosine", "linear", "constant"))
    p.add_argument("--eps", type=float, default=0.005)
    p.add_argument("--iterations", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=16, help="global batch (split over DDP ranks)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--betas", default="0.9,0.99", help="Adam betas, e.g. 0.9,0.99 (critic: 0.5,0.99)")
    p.add_argument("--milestones", default="",
                   help="comma-separated fractions of --iterations where the lr is multiplied by --gamma "
                        "(reference: 0.25,0.5,0.75)")
    p.add_argument("--gamma", type=float, default=0.5)
    p.add_argument("--warmup", type=float, default=0.0, help="linear lr warm-up over this fraction of the run")
    p.add_argument("--ema", type=float, default=0.0,
                   help="EMA decay; 0 = off, the reference (then the raw weights are saved and sampled)")
    p.add_argument("--ema-warmup", action="store_true", help="EMA decay min(ema, (1+n)/(10+n)) at update n")
    p.add_argument("--grad-clip", type=float, default=0.0, help="max gradient norm; 0 = off")
    p.add_argument("--loss", default="l1", choices=("l1", "l2"))
    p.add_argument("--guidance-state", default="optimal", choices=("optimal", "marginal"),
                   help="texture guidance: the structure's optimal step from t (reference) or its sample at t-1")
    p.add_argument("--recipe", default="irsde", choices=("irsde", "reference"),
                   help="IR-SDE baseline only: IR-SDE's inpainting recipe (plain L1, t in 1..T, holes 1) or "
                        "the texture net's (10x hole weight, t in 2..T, holes 0)")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--val-count", type=int, default=8,
                   help="held-out training crops scored every --checkpoint-every iterations (0 = no curve)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (0 = main process)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="mixed precision (CUDA only)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default); split over ranks")
    p.add_argument("--sigma", type=float, default=3.0, help="Canny sigma of the structure maps (metadata)")
    p.add_argument("--nproc", type=int, default=1, help="processes (GPUs); >1 relaunches under torch.distributed.run")
    a = p.parse_args(argv)
    try:
        a.betas = tuple(float(v) for v in a.betas.split(","))
        a.milestones = [float(v) for v in a.milestones.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--betas must be two numbers like 0.9,0.99 and --milestones fractions like 0.5,0.75; "
                        f"got {a.betas!r} and {a.milestones!r}") from None
    if len(a.betas) != 2:
        raise UserError(f"--betas needs two values, got {a.betas}")
    bad = [m for m in a.milestones if not 0 < m < 1]
    if bad:
        raise UserError(f"--milestones are fractions of --iterations in (0, 1), got {bad[0]}; "
                        f"e.g. 0.5 halves the lr half-way")
    for name in ("iterations", "batch_size", "checkpoint_every", "T", "nf", "depth", "critic_ngf", "nproc",
                 "attn_heads", "attn_dim_head"):
        if getattr(a, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if not 0 <= a.ema < 1:
        raise UserError(f"--ema must be in [0, 1), got {a.ema}")
    if not 0 <= a.warmup < 1:
        raise UserError(f"--warmup must be a fraction in [0, 1), got {a.warmup}")
    if a.curve is None:
        a.curve = a.state_dir / "curve.csv"
    return a


def ctor_kwargs(a) -> dict:
    from .checkpoints import default_ctor_kwargs

    kwargs = default_ctor_kwargs(a.net)
    if a.net == "critic":
        kwargs["ngf"] = a.critic_ngf
    else:
        kwargs.update(nf=a.nf, depth=a.depth)
        if (a.attn_heads, a.attn_dim_head) != (4, 32):  # the paper's values stay implicit
            kwargs.update(attn_heads=a.attn_heads, attn_dim_head=a.attn_dim_head)
    return kwargs


def run_settings(a) -> dict:
    """Settings a resumed run must share with the saved state (iterations may grow)."""
    return {"net": a.net, "ctor_kwargs": ctor_kwargs(a), "sde": [a.T, a.max_sigma, a.schedule, a.eps],
            "batch_size": a.batch_size, "lr": a.lr, "betas": list(a.betas), "milestones": a.milestones,
            "gamma": a.gamma, "warmup": a.warmup, "ema": a.ema, "ema_warmup": a.ema_warmup,
            "grad_clip": a.grad_clip, "loss": a.loss, "seed": a.seed, "size": a.size,
            "guidance_state": a.guidance_state, "recipe": recipe(a.net, a.recipe), "val_count": a.val_count}


def _relaunch(argv, nproc: int) -> int:
    """Run this command under torch.distributed.run with ``nproc`` processes; returns its exit status."""
    rest, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        rest.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "strdiffusion", "train", *rest]
    log.info("launching %d processes: %s", nproc, " ".join(cmd))
    return subprocess.call(cmd)


from .gpu import resolve_device as _device  # noqa: E402  one device resolver for every stage (issue 14)


# ---------------------------------------------------------------------- main

def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if a.nproc > 1 and world_size == 1:
        return _relaunch(argv, a.nproc)
    return train(a, world_size)


class Run:
    """One training run's mutable state: network, optimiser, EMA, histories, and their save/load."""

    HISTORY = ("iteration", "loss", "lr", "seconds")

    def __init__(self, a, net, optimizer, scaler, ema, rank: int, metrics: tuple):
        self.a, self.net, self.optimizer, self.scaler, self.ema, self.rank = a, net, optimizer, scaler, ema, rank
        self.history = {k: [] for k in self.HISTORY}
        self.curve = {k: [] for k in ("iteration", "seconds", "loss", "lr", *metrics, "val_seconds")}
        self.start, self.elapsed = 0, 0.0
        self.settings = run_settings(a)
        self.path = a.state_dir / "state.pt"

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
        if self.rank == 0:
            log.info("resuming from %s at iteration %d", self.path, self.start)

    def save(self, iteration: int) -> None:
        if self.rank != 0:
            return
        net = self.net
        state = {"iteration": iteration, "seconds": self.elapsed, "settings": self.settings,
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
        write_losses(self.a.state_dir / "losses.csv", self.history)
        write_curve(self.a.curve, self.curve)

    def record(self, iteration: int, loss: float, lr: float) -> None:
        for k, v in zip(self.HISTORY, (iteration, loss, lr, self.elapsed)):
            self.history[k].append(v)

    def weights(self) -> dict:
        """The weights to sample from: the EMA when enabled, else the raw weights (reference)."""
        return self.ema.state_dict(self.net) if self.ema is not None else self.net.state_dict()


def _validate(run: Run, val_net, val_batch, sde, device, iteration: int, hole_fill: float) -> None:
    """Score the current sampling weights on the validation batch; append a curve row."""
    from .validation import evaluate

    since = int(run.curve["iteration"][-1]) if run.curve["iteration"] else 0
    losses = run.history["loss"][len(run.history["loss"]) - (iteration - since):]  # one loss per iteration
    tick = time.perf_counter()
    val_net.load_state_dict(run.weights())
    scores = evaluate(run.a.net, val_net, sde, val_batch, device, hole_fill)
    row = {"iteration": iteration, "seconds": run.elapsed, "loss": float(np.mean(losses)) if losses else float("nan"),
           "lr": run.history["lr"][-1] if run.history["lr"] else run.a.lr, **scores,
           "val_seconds": time.perf_counter() - tick}
    for k in run.curve:
        run.curve[k].append(float(row[k]))
    log.info("iteration %d validation: %s", iteration,
             ", ".join(f"{k} {scores[k]:.4g}" for k in scores))


def _setup(a, world_size: int):
    """Device, ranks and process group of a run."""
    rank = int(os.environ.get("RANK", "0"))
    device = _device(a.device, int(os.environ.get("LOCAL_RANK", "0")))
    if world_size > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if a.batch_size % world_size:
        raise UserError(f"--batch-size {a.batch_size} is not divisible by the {world_size} processes")
    per_rank = a.batch_size // world_size
    if a.net == "critic" and per_rank > 4 and per_rank % 4:
        raise UserError(f"the critic's minibatch-stddev groups of 4 need a per-process batch divisible by 4, "
                        f"got {per_rank}")
    if a.threads > 0 and device.type == "cpu":
        torch.set_num_threads(max(1, a.threads // world_size))
    amp = a.amp if device.type == "cuda" else "none"
    if a.amp != "none" and amp == "none":
        log.warning("--amp %s ignored: mixed precision is used on CUDA only", a.amp)
    if rank == 0:
        log.info("training %s on %s: %d process(es), batch %d per process, effective batch %d, lr %.3g, betas %s",
                 a.net, device, world_size, per_rank, a.batch_size, a.lr, a.betas)
    return rank, device, amp


def _step(run: Run, model, sde, batch, autocast_dtype, iteration: int, lr: float, world_size: int) -> float:
    """One optimiser step; returns the (all-reduced) loss. A non-finite loss raises before the step."""
    a = run.a
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(batch["image"].device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = objective(model, sde, batch, a.net, a.loss, a.guidance_state, a.recipe)
    value = loss.detach().float()
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(value)
        value /= world_size
    value = float(value)
    if not math.isfinite(value):
        run.save(iteration - 1)
        where = f"; the last good state (iteration {iteration - 1}) is in {run.path}" if run.rank == 0 else ""
        raise UserError(f"the {a.net} loss became {value} at iteration {iteration}{where}; lower --lr or set "
                        f"--grad-clip, then re-run")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if a.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.net.parameters(), a.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if run.ema is not None:
        run.ema.update(run.net)
    return value


def train(a, world_size: int = 1) -> int:
    from tqdm import tqdm

    from . import checkpoints
    from .sde import IRSDE
    from .validation import metric_names, validation_batch

    rank, device, amp = _setup(a, world_size)
    _, t_min, hole_fill = recipe(a.net, a.recipe)
    sde = IRSDE(T=a.T, max_sigma=a.max_sigma, schedule=a.schedule, eps=a.eps, device=device)
    dataset, val_set = build_dataset(a.images, a.structure, a.masks, a.size, a.T, a.seed, a.net, t_min, a.val_count)
    kwargs = ctor_kwargs(a)
    torch.manual_seed(seed_for(a.seed, a.net, "init"))
    net = checkpoints.build_network(a.net, **kwargs).to(device)
    net.train()
    if rank == 0:
        log.info("%s network %s: %.2f M parameters; %d training images (%d held out for validation), %d masks, %d px",
                 a.net, kwargs, sum(p.numel() for p in net.parameters()) / 1e6, len(dataset),
                 len(val_set) if val_set else 0, len(dataset.masks), dataset.size)
    optimizer = torch.optim.Adam(net.parameters(), lr=a.lr, betas=a.betas)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    ema = EMA(net, a.ema, a.ema_warmup) if a.ema > 0 else None
    run = Run(a, net, optimizer, scaler, ema, rank, metric_names(a.net))
    run.resume()
    val_batch = val_net = None
    if val_set is not None and rank == 0:
        val_batch = validation_batch(val_set, range(len(val_set)), a.seed, a.T, t_min)
        val_net = checkpoints.build_network(a.net, **kwargs).to(device)

    model = net
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=IterationBatches(run.start, a.iterations, a.batch_size, rank, world_size),
        num_workers=a.workers, pin_memory=device.type == "cuda", persistent_workers=False)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    bar = tqdm(total=a.iterations, initial=run.start, desc=f"train {a.net}", unit="it", file=sys.stderr,
               disable=rank != 0, mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
    if val_batch is not None and not run.curve["iteration"]:
        _validate(run, val_net, val_batch, sde, device, run.start, hole_fill)  # the untrained network
    iteration = run.start
    tick = time.perf_counter()
    try:
        for batch in loader:
            iteration += 1
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            lr = learning_rate(a.lr, iteration, a.iterations, a.milestones, a.gamma, a.warmup)
            value = _step(run, model, sde, batch, autocast_dtype, iteration, lr, world_size)
            now = time.perf_counter()
            run.elapsed += now - tick
            run.record(iteration, value, lr)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4g}", refresh=False)
            if iteration % a.checkpoint_every == 0 or iteration == a.iterations:
                if val_batch is not None:
                    _validate(run, val_net, val_batch, sde, device, iteration, hole_fill)
                run.save(iteration)
                if rank == 0:
                    losses = run.history["loss"]
                    log.info("iteration %d/%d: loss %.4g (mean of the last %d), lr %.3g, %.1f it/s", iteration,
                             a.iterations, float(np.mean(losses[-a.checkpoint_every:])),
                             min(a.checkpoint_every, len(losses)), lr, len(losses) / max(run.elapsed, 1e-9))
            tick = time.perf_counter()
    finally:
        bar.close()
    if rank == 0:
        _finish(run, checkpoints, kwargs, sde, dataset, max(iteration, run.start), hole_fill)
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return 0


def _finish(run: Run, checkpoints, kwargs, sde, dataset, iteration: int, hole_fill: float) -> None:
    """Final checkpoint (with its provenance and curve), loss plot and summary line."""
    a = run.a
    final_net = checkpoints.build_network(a.net, **kwargs)
    final_net.load_state_dict(run.weights())
    hole_weight, t_min, _ = recipe(a.net, a.recipe)
    extra = {"iteration": iteration, "structure_sigma": a.sigma, "ema": run.ema is not None,
             "ema_decay": a.ema, "image_size": dataset.size, "seed": a.seed, "batch_size": a.batch_size,
             "loss": a.loss, "lr": a.lr, "milestones": a.milestones, "hole_weight": hole_weight, "t_min": t_min,
             "hole_fill": hole_fill, "train_seconds": round(run.elapsed, 1),
             "curve": {k: list(v) for k, v in run.curve.items()}, **provenance(a)}
    if a.net == "texture":
        extra["guidance_state"] = a.guidance_state
    checkpoints.save_checkpoint(a.out, final_net, a.net, kwargs, sde.settings(), extra)
    write_curve(a.curve, run.curve)
    plot_losses(run.history, a.out.with_name(a.out.stem + "_loss.png"), a.net)
    losses = run.history["loss"]
    if losses:
        w = max(1, min(50, len(losses) // 5))
        log.info("%s loss: first %d iterations %.4g -> last %d iterations %.4g (%d iterations, %.1f s, %.2f it/s)",
                 a.net, w, float(np.mean(losses[:w])), w, float(np.mean(losses[-w:])), len(losses),
                 run.elapsed, len(losses) / max(run.elapsed, 1e-9))
    log.info("wrote %s", a.out)


def provenance(a) -> dict:
    """Where a checkpoint came from: the trainer's settings, the command line, and the git commit of
    the package when it runs from a checkout (empty otherwise)."""
    commit = ""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        pass
    settings = run_settings(a)
    settings["ctor_kwargs"] = dict(settings["ctor_kwargs"])
    settings["iterations"] = a.iterations
    return {"commit": commit, "train_settings": settings, "command": " ".join(sys.argv)}


def write_curve(path: Path, curve: dict) -> None:
    import pandas as pd

    from .utils import write_csv_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(curve)
    df["iteration"] = df["iteration"].astype(int)
    write_csv_atomic(df, path)


def write_losses(path: Path, history: dict) -> None:
    import pandas as pd

    from .utils import write_csv_atomic

    write_csv_atomic(pd.DataFrame(history), path)


def plot_losses(history: dict, path: Path, kind: str) -> None:
    """Loss curve (raw and moving average) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its, losses = np.asarray(history["iteration"]), np.asarray(history["loss"])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if len(losses):
        ax.plot(its, losses, color="0.75", lw=0.7, label="loss")
        w = max(1, len(losses) // 20)
        if w > 1:
            smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
            ax.plot(its[w - 1:], smooth, color="C0", lw=1.5, label=f"mean of {w}")
        ax.set_yscale("log" if kind != "critic" and losses.min() > 0 else "linear")
        ax.legend()
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(f"{kind} training loss")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
