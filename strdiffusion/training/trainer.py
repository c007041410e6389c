"""Training stage: the structure, texture, critic and IR-SDE networks.

One trainer for all four kinds; only the objective differs:

- ``structure``: x0 = gray, mu = edge * mask (1 channel). The UNet predicts the noise of x_t; the
  loss matches the predicted reverse-step mean p to the optimal x*_{t-1} = q.
- ``texture``: x0 = RGB, mu = RGB * mask (holes 0); the SPADE guidance is the structure's optimal
  step x*_{t-1} from a structure sample at t (x0 = gray, mu = edge * mask), as the reference texture
  trainer does (``--guidance-state marginal`` uses a forward sample of the structure at t - 1 instead).
- ``irsde``: the texture UNet without guidance (the IR-SDE baseline). ``--recipe irsde`` (default) is
  IR-SDE's own inpainting recipe: unweighted L1 matching loss, t in {1..T}, holes of mu filled with 1
  (white); ``--recipe reference`` trains it like the texture net (10x hole weight, holes 0, t in {2..T}).
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
held-out training crops with fixed masks and noise (:mod:`strdiffusion.training.learning_curve`); the rows go to
``--curve FILE.csv`` (iteration, seconds, loss, lr, metrics). A non-finite loss stops the run with a
one-line error before the optimiser step, after saving the last good state.

Reproducibility: everything random in iteration i (which images and masks, crops, flips, t, noise)
comes from generators seeded by (seed, kind, i, slot), so the data order needs no state, a resumed
run ends with exactly the weights of an uninterrupted one (on CPU), and a DDP run sees the same
global batches as a single process (rank r takes its slice of every global batch).

Outputs: ``--out FILE.pt`` (final weights, the EMA when enabled, via ``checkpoints.save_checkpoint``;
the curve rides along in its metadata),
``FILE_loss.png`` (loss curve) and, in ``--state-dir``, ``state.pt`` (full training state, written
every ``--checkpoint-every`` iterations; re-running the same command resumes from it, also with more
``--iterations``, and the checkpoint's ``resumes`` metadata records each resume's iteration and the
earlier run's planned iterations) and ``losses.csv`` (iteration, loss, lr, seconds).

Faults (:mod:`strdiffusion.runtime.signals`, :mod:`strdiffusion.runtime.lock`): on SIGTERM or SIGUSR1, or
``--stop-before-limit`` seconds before the SLURM job's time limit, the run saves its state at the next
iteration boundary and exits with status 75 (interrupted; re-run to resume). While it runs it holds
``writer.lock`` in ``--state-dir`` (logged to ``writer.log`` there); a second run on the same folder refuses
to start while the first lives, or with ``--lock-wait`` waits for it to end (the workflow's jobs wait: a job
started beside an older one of a killed driver does not fail on the lock, so Snakemake keeps what that one writes).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
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

from strdiffusion.core.constants import CRITIC_STDDEV_GROUP
from strdiffusion.core.objectives import objective, recipe, recipe_fill
from strdiffusion.core.seeds import seed_for
from strdiffusion.io.errors import UserError
from strdiffusion.io.files import atomic_path
from strdiffusion.models.checkpoints import network_kwargs
from strdiffusion.runtime.gpu import check_rank_device
from strdiffusion.runtime.gpu import resolve_device as _device
from strdiffusion.runtime.environment import to_log_and_console
from strdiffusion.runtime.lock import StateLock
from strdiffusion.runtime.precision import MixedPrecision, configure, in_effect
from strdiffusion.runtime.signals import Interrupted, Notice
from strdiffusion.settings.fields import command_line, nested, option, to_argv, to_record
from strdiffusion.settings.jobs import TrainSettings, device_option
from strdiffusion.settings.methods import NETWORKS
from strdiffusion.training.data import IterationBatches, build_dataset
from strdiffusion.training.state import EMA, Run, write_curve

log = logging.getLogger("strdiffusion.training.trainer")


# ---------------------------------------------------------------------- learning rate

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


# ---------------------------------------------------------------------- command line

@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainJob:
    """One training job: the network, its files and processes (command line only), and its settings."""

    net: str = option(help="which network to train", choices=NETWORKS)
    images: Path = option(help="folder of training images (RGB PNG)")
    structure: Path = option(help="structure folder of the training images (gray/, edge/)")
    masks: Path = option(help="folder of training masks (white = hole)")
    out: Path = option(help="final checkpoint (.pt)")
    state_dir: Path = option(help="folder of the resumable state and losses.csv")
    curve: Path | None = option(None, "learning-curve CSV (default: curve.csv in --state-dir)")
    device: str = device_option()
    threads: int = option(0, "torch CPU threads (0 = torch's default); split over ranks")
    nproc: int = option(1, "processes (GPUs); >1 relaunches under torch.distributed.run")
    stop_before_limit: float = option(120.0, "inside a SLURM job: save and exit (status 75) this many seconds "
                                             "before its time limit, at most a quarter of it (0 = off)")
    lock_wait: float = option(0.0, "seconds to wait while a live job holds --state-dir's lock, saying so in the "
                                   "log (0 = refuse at once, -1 = while that job lives)")
    settings: TrainSettings = nested(TrainSettings, "training (config: train, seed, image_size, structure.sigma_train)")

    def __post_init__(self):
        if self.nproc < 1:
            raise UserError(f"--nproc must be >= 1, got {self.nproc}")
        if self.curve is None:
            object.__setattr__(self, "curve", self.state_dir / "curve.csv")


def run_settings(job: TrainJob) -> dict:
    """Settings a resumed run must share with the saved state (iterations may grow)."""
    s = job.settings
    return {"net": job.net, "ctor_kwargs": network_kwargs(job.net, s.model),
            "sde": [s.sde.T, s.sde.max_sigma, s.sde.schedule, s.sde.eps],
            "batch_size": s.batch_size, "lr": s.lr, "betas": list(s.betas), "milestones": list(s.milestones),
            "gamma": s.gamma, "warmup": s.warmup, "ema": s.ema, "ema_warmup": s.ema_warmup,
            "grad_clip": s.grad_clip, "loss": s.loss, "seed": s.seed, "size": s.size,
            "guidance_state": s.guidance_state, "recipe": recipe(job.net, s.recipe), "val_count": s.val_count}


def _relaunch(job: TrainJob) -> int:
    """Run ``job`` under torch.distributed.run with ``job.nproc`` processes, each one rank; returns its exit status."""
    argv = to_argv(job, every=True)
    del argv[argv.index("--nproc"):argv.index("--nproc") + 2]  # a rank runs alone; torch's launcher reads --nproc*
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(job.nproc),
           "-m", "strdiffusion", "train", *argv]
    log.info("launching %d processes: %s", job.nproc, command_line(cmd))
    return subprocess.call(cmd)


# ---------------------------------------------------------------------- the job

def run_job(job: TrainJob) -> int:
    """Train ``job``: in this process, or under torch.distributed.run when it asks for more than one process;
    returns the exit status."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    with guarded(job, world_size) as notice:
        if job.nproc > 1 and world_size == 1:
            check_rank_device(job.device, job.nproc)
            return _relaunch(job)
        return train(job, world_size, notice)


@contextlib.contextmanager
def guarded(job: TrainJob, world_size: int):
    """The state folder's writer lock (held by the launching process, not by DDP ranks) and the notice to stop."""
    lock = StateLock(job.state_dir / "writer.lock", f"the training state {job.state_dir}",
                     history=job.state_dir / "writer.log")
    with contextlib.ExitStack() as stack:
        if world_size == 1:
            lock.acquire_waiting(job.lock_wait, functools.partial(to_log_and_console, log))
            stack.callback(lock.release)
        try:
            yield stack.enter_context(Notice(job.stop_before_limit))
            lock.outcome = "finished"
        except Interrupted as exc:
            lock.outcome = f"{exc.reason}, state saved at iteration {exc.iteration}"
            raise
        except BaseException as exc:
            lock.outcome = type(exc).__name__
            raise


def _validate(run: Run, val_net, val_batch, sde, device, iteration: int, hole_fill: float | str) -> None:
    """Score the current sampling weights on the validation batch; append a curve row."""
    from strdiffusion.training.learning_curve import evaluate

    since = int(run.curve["iteration"][-1]) if run.curve["iteration"] else 0
    losses = run.history["loss"][len(run.history["loss"]) - (iteration - since):]  # one loss per iteration
    tick = time.perf_counter()
    val_net.load_state_dict(run.weights())
    scores = evaluate(run.job.net, val_net, sde, val_batch, device, hole_fill, run.job.settings.parameterization)
    row = {"iteration": iteration, "seconds": run.elapsed, "loss": float(np.mean(losses)) if losses else float("nan"),
           "lr": run.history["lr"][-1] if run.history["lr"] else run.job.settings.lr, **scores,
           "val_seconds": time.perf_counter() - tick}
    for k in run.curve:
        run.curve[k].append(float(row[k]))
    log.info("iteration %d validation: %s", iteration,
             ", ".join(f"{k} {scores[k]:.4g}" for k in scores))


def _setup(job: TrainJob, world_size: int):
    """Device, ranks and process group of a run."""
    s = job.settings
    rank = int(os.environ.get("RANK", "0"))
    check_rank_device(job.device, world_size)
    configure(s.tf32, s.deterministic)  # before the first CUDA operation (cuBLAS reads its workspace setting once)
    device = _device(job.device, int(os.environ.get("LOCAL_RANK", "0")))
    if world_size > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if s.batch_size % world_size:
        raise UserError(f"--batch-size {s.batch_size} is not divisible by the {world_size} processes")
    per_rank = s.batch_size // world_size
    group = CRITIC_STDDEV_GROUP
    if job.net == "critic" and per_rank > group and per_rank % group:
        raise UserError(f"the critic's minibatch-stddev groups of {group} need a per-process batch divisible by "
                        f"{group}, got {per_rank}")
    if job.threads > 0 and device.type == "cpu":
        torch.set_num_threads(max(1, job.threads // world_size))
    amp = s.amp if device.type == "cuda" else "none"
    if s.amp != "none" and amp == "none":
        log.warning("--amp %s ignored: mixed precision is used on CUDA only", s.amp)
    if rank == 0:
        log.info("training %s on %s: %d process(es), batch %d per process, effective batch %d, lr %.3g, betas %s",
                 job.net, device, world_size, per_rank, s.batch_size, s.lr, s.betas)
    return rank, device, amp


def _step(run: Run, model, sde, batch, mp: MixedPrecision, iteration: int, lr: float, world_size: int) -> float:
    """One optimiser step; returns the (all-reduced) loss. A non-finite loss raises before the step; an fp16
    step with overflowing gradients is skipped (``mp``)."""
    net, s = run.job.net, run.job.settings
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    with mp.autocast():
        loss = objective(model, sde, batch, net, s.loss, s.guidance_state, s.recipe, s.parameterization, s.hole_fill)
    value = loss.detach().float()
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(value)
        value /= world_size
    value = float(value)
    if not math.isfinite(value):
        run.save(iteration - 1)
        where = f"; the last good state (iteration {iteration - 1}) is in {run.path}" if run.rank == 0 else ""
        raise UserError(f"the {net} loss became {value} at iteration {iteration}{where}; lower --lr or set "
                        f"--grad-clip, then re-run")
    stepped = mp.step(loss, run.optimizer, run.net.parameters(), s.grad_clip, iteration)
    if run.ema is not None and stepped:
        run.ema.update(run.net)
    return value


def train(job: TrainJob, world_size: int = 1, notice: Notice | None = None) -> int:
    """Train ``job.net`` to ``job.out``, resuming from ``job.state_dir``; ``world_size`` DDP processes.
    Raises :class:`Interrupted` after saving the state when ``notice`` asks to stop."""
    rank, device, amp = _setup(job, world_size)
    run, parts = _build(job, rank, device, amp)
    iteration = _loop(run, parts, device, amp, world_size, notice)
    if rank == 0:
        _finish(run, parts, max(iteration, run.start))
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return 0


@dataclasses.dataclass
class _Parts:
    """What a run trains with: the SDE, the data, the network settings, and the validation (rank 0)."""

    sde: object
    dataset: object
    kwargs: dict
    hole_fill: float | str
    mp: MixedPrecision
    val_net: object = None
    val_batch: dict | None = None


def _build(job: TrainJob, rank: int, device, amp: str) -> tuple[Run, _Parts]:
    """SDE, data, network, optimiser and EMA, the run resumed from its state, and the validation set-up.
    The global torch RNG is seeded and used in a fixed order (network, resumed state, validation network)."""
    from strdiffusion.core.sde import IRSDE
    from strdiffusion.models import checkpoints as checkpoints
    from strdiffusion.training.learning_curve import metric_names, validation_batch

    s = job.settings
    _, t_min, _ = recipe(job.net, s.recipe)
    hole_fill = recipe_fill(job.net, s.recipe, s.hole_fill)
    sde = IRSDE(**dataclasses.asdict(s.sde), device=device)
    dataset, val_set = build_dataset(job.images, job.structure, job.masks, s.size, s.sde.T, s.seed, job.net, t_min,
                                     s.val_count)
    kwargs = network_kwargs(job.net, s.model)
    torch.manual_seed(seed_for(s.seed, job.net, "init"))
    net = checkpoints.build_network(job.net, **kwargs).to(device)
    net.train()
    if rank == 0:
        log.info("%s network %s: %.2f M parameters; %d training images (%d held out for validation), %d masks, %d px",
                 job.net, kwargs, sum(p.numel() for p in net.parameters()) / 1e6, len(dataset),
                 len(val_set) if val_set else 0, len(dataset.masks), dataset.size)
    optimizer = torch.optim.Adam(net.parameters(), lr=s.lr, betas=s.betas)
    mp = MixedPrecision(amp, device.type)
    ema = EMA(net, s.ema, s.ema_warmup) if s.ema > 0 else None
    run = Run(job, run_settings(job), net, optimizer, mp.scaler, ema, rank, metric_names(job.net))
    run.resume()
    parts = _Parts(sde, dataset, kwargs, hole_fill, mp)
    if val_set is not None and rank == 0:
        parts.val_batch = validation_batch(val_set, range(len(val_set)), s.seed, s.sde.T, t_min)
        parts.val_net = checkpoints.build_network(job.net, **kwargs).to(device)
    return run, parts


def _loop(run: Run, parts: _Parts, device, amp: str, world_size: int, notice: Notice | None = None) -> int:
    """The training iterations from ``run.start`` on, with validation and saved state every
    ``checkpoint_every`` iterations; returns the last iteration done."""
    from tqdm import tqdm

    job, s = run.job, run.job.settings
    model = run.net
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(run.net, device_ids=[device.index] if device.type == "cuda" else None)
    loader = torch.utils.data.DataLoader(
        parts.dataset, batch_sampler=IterationBatches(run.start, s.iterations, s.batch_size, run.rank, world_size),
        num_workers=s.workers, pin_memory=device.type == "cuda", persistent_workers=False)
    bar = tqdm(total=s.iterations, initial=run.start, desc=f"train {job.net}", unit="it", file=sys.stderr,
               disable=run.rank != 0, mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
    validate = None
    if parts.val_batch is not None:
        validate = functools.partial(_validate, run, parts.val_net, parts.val_batch, parts.sde, device,
                                     hole_fill=parts.hole_fill)
        if not run.curve["iteration"]:
            validate(run.start)  # the untrained network
    iteration = run.start
    tick = time.perf_counter()
    try:
        for batch in loader:
            iteration += 1
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            lr = learning_rate(s.lr, iteration, s.iterations, s.milestones, s.gamma, s.warmup)
            value = _step(run, model, parts.sde, batch, parts.mp, iteration, lr, world_size)
            run.elapsed += time.perf_counter() - tick
            run.record(iteration, value, lr)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4g}", refresh=False)
            saved = iteration % s.checkpoint_every == 0 or iteration == s.iterations
            if saved:
                if validate is not None:
                    validate(iteration)
                run.save(iteration)
                _log_progress(run, iteration, lr)
            if notice is not None and iteration < s.iterations and notice.requested(world_size):
                _stop(run, iteration, saved, notice.reason)
            tick = time.perf_counter()
    finally:
        bar.close()
    return iteration


def _stop(run: Run, iteration: int, saved: bool, reason: str) -> None:
    """Save the state at this iteration boundary (unless just saved) and raise :class:`Interrupted`."""
    if not saved:
        run.save(iteration)
    if run.rank == 0:
        log.info("stopped by %s at iteration %d/%d; state saved in %s", reason, iteration,
                 run.job.settings.iterations, run.path)
    raise Interrupted(reason, f"state saved at iteration {iteration} in {run.path}; re-run the same command to "
                              "resume", iteration)


def _log_progress(run: Run, iteration: int, lr: float) -> None:
    if run.rank != 0:
        return
    s, losses = run.job.settings, run.history["loss"]
    log.info("iteration %d/%d: loss %.4g (mean of the last %d), lr %.3g, %.1f it/s", iteration,
             s.iterations, float(np.mean(losses[-s.checkpoint_every:])),
             min(s.checkpoint_every, len(losses)), lr, len(losses) / max(run.elapsed, 1e-9))


def _finish(run: Run, parts: _Parts, iteration: int) -> None:
    """Final checkpoint (with its provenance and curve), loss plot and summary line."""
    from strdiffusion.models import checkpoints as checkpoints

    job, s = run.job, run.job.settings
    final_net = checkpoints.build_network(job.net, **parts.kwargs)
    final_net.load_state_dict(run.weights())
    hole_weight, t_min, _ = recipe(job.net, s.recipe)
    extra = {"iteration": iteration, "structure_sigma": s.sigma, "ema": run.ema is not None,
             "ema_decay": s.ema, "image_size": parts.dataset.size, "seed": s.seed, "batch_size": s.batch_size,
             "loss": s.loss, "lr": s.lr, "milestones": list(s.milestones), "hole_weight": hole_weight, "t_min": t_min,
             "hole_fill": parts.hole_fill, "train_seconds": round(run.elapsed, 1), "resumes": run.resumes,
             "curve": {k: list(v) for k, v in run.curve.items()}, **provenance(job),
             "precision": {"amp": parts.mp.amp, "skipped_steps": parts.mp.skipped_total, **in_effect()}}
    if job.net == "texture":
        extra["guidance_state"] = s.guidance_state
    if job.net != "critic":
        extra["parameterization"] = s.parameterization
    checkpoints.save_checkpoint(job.out, final_net, job.net, parts.kwargs, parts.sde.settings(), extra)
    write_curve(job.curve, run.curve)
    plot_losses(run.history, job.out.with_name(job.out.stem + "_loss.png"), job.net)
    losses = run.history["loss"]
    if losses:
        w = max(1, min(50, len(losses) // 5))
        log.info("%s loss: first %d iterations %.4g -> last %d iterations %.4g (%d iterations, %.1f s, %.2f it/s)",
                 job.net, w, float(np.mean(losses[:w])), w, float(np.mean(losses[-w:])), len(losses),
                 run.elapsed, len(losses) / max(run.elapsed, 1e-9))
    log.info("wrote %s", job.out)


def provenance(job: TrainJob) -> dict:
    """Where a checkpoint came from: the training job (its typed settings and inputs, ``job``), its command line
    rendered from the job (``train_argv``, the words after ``strdiffusion train``; ``command``, the whole line
    quoted for a shell), the trainer's settings, and the git commit of the package when it runs from a checkout
    (empty otherwise)."""
    commit = ""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        pass
    settings = run_settings(job)
    settings["ctor_kwargs"] = dict(settings["ctor_kwargs"])
    settings["iterations"] = job.settings.iterations
    argv = to_argv(job, every=True)
    return {"commit": commit, "train_settings": settings, "job": to_record(job), "train_argv": argv,
            "command": command_line(["strdiffusion", "train", *argv])}


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
