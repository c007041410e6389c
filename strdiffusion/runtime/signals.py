"""Stopping a job cleanly on notice, so that a time limit, a preemption or ``scancel`` costs no work.

Notice comes as SIGTERM (``scancel``, preemption, the end of a SLURM time slot, ``kill``), as SIGUSR1 (the
warning SLURM sends before the limit with ``sbatch --signal=USR1@SECONDS``), or from the job's own SLURM time
limit: a training run inside a SLURM job reads its end time from ``squeue`` and stops
``stop_before_limit`` seconds before it (at most a quarter of the slot), so the slot ends with a saved state
however the signals travel through the job's processes.

A training run polls :class:`Notice` at every iteration boundary, saves its full resumable state and exits with
:data:`INTERRUPTED`; an inpainting job raises :class:`Interrupted` at once from the signal handler, which
drops the batch in hand and removes the shard's temporary folder (the shard is written whole or not at all).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time

log = logging.getLogger("strdiffusion.runtime.signals")

# The exit status of a job stopped on notice (sysexits' EX_TEMPFAIL: try again later; the state is saved).
INTERRUPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Interrupted(BaseException):
    """A job stopped on notice. A BaseException, so ``except Exception`` handlers let it through while atomic
    writers still remove their temporary files."""

    def __init__(self, reason: str, detail: str = "", iteration: int | None = None):
        self.reason, self.detail, self.iteration = reason, detail, iteration
        super().__init__(f"interrupted by {reason}{'; ' + detail if detail else ''}")


def parse_slurm_time(text: str) -> float | None:
    """Seconds in a SLURM duration (``[days-]hours:minutes:seconds``, ``minutes:seconds``, ``seconds``);
    None for ``UNLIMITED``, ``NOT_SET``, ``INVALID`` or anything else unreadable."""
    text = text.strip()
    days = 0
    if "-" in text:
        head, text = text.split("-", 1)
        if not head.isdigit():
            return None
        days = int(head)
    parts = text.split(":")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        return None
    seconds = 0
    for p in parts:
        seconds = seconds * 60 + int(p)
    return float(days * 86400 + seconds)


def slurm_time_left(job_id: str | None = None) -> tuple[float, float] | None:
    """(seconds left, time limit in seconds) of SLURM job ``job_id`` (default ``$SLURM_JOB_ID``); None outside
    SLURM, without a limit, or when ``squeue`` cannot tell."""
    job_id = job_id or os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    try:
        res = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%L|%l"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    fields = res.stdout.strip().split("|") if res.returncode == 0 else []
    if len(fields) != 2:
        return None
    left, limit = parse_slurm_time(fields[0]), parse_slurm_time(fields[1])
    return (left, limit) if left is not None and limit is not None else None


class _Handlers:
    """Context manager: ``_on_signal`` handles each of ``signals`` in the main thread while inside (elsewhere
    Python cannot install handlers, and nothing is changed); the previous handlers come back on exit."""

    def __init__(self, signals=SIGNALS):
        self.signals, self._old = tuple(signals), {}

    def _on_signal(self, signum, frame):
        raise NotImplementedError

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._old[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


class Notice(_Handlers):
    """The first stop signal received, and the deadline before the job's SLURM time limit.

    Use as a context manager around the work (the previous handlers come back on exit); poll
    :meth:`requested` where stopping is safe. ``stop_before_limit`` <= 0 turns the deadline off.
    """

    def __init__(self, stop_before_limit: float = 0.0, signals=SIGNALS):
        super().__init__(signals)
        self.reason = None
        self.deadline = None
        if stop_before_limit > 0:
            slot = slurm_time_left()
            if slot is not None:
                left, limit = slot
                margin = min(stop_before_limit, 0.25 * limit)  # room to write the checkpoint and end the job
                self.deadline = time.monotonic() + left - margin
                log.info("SLURM job %s: %.0f s of %.0f s left; stopping with a saved state %.0f s before the limit",
                         os.environ.get("SLURM_JOB_ID"), left, limit, margin)

    def _on_signal(self, signum, frame):
        if self.reason is None:
            self.reason = signal.Signals(signum).name
            log.warning("%s received: stopping at the next safe point", self.reason)

    def requested(self, world_size: int = 1) -> str | None:
        """Why to stop now (a signal's name, or ``time limit``), or None. With ``world_size`` > 1 every rank of
        the process group must call it at the same point: any rank's notice stops them all together."""
        if self.reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = "the SLURM time limit"
        if world_size > 1:
            import torch
            import torch.distributed as dist

            device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
            flag = torch.tensor([0 if self.reason is None else 1], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() and self.reason is None:
                self.reason = "another rank's notice"
        return self.reason


class raise_on_notice(_Handlers):
    """Context manager: SIGTERM or SIGUSR1 raises :class:`Interrupted` at once in the main thread (for work
    that holds nothing worth saving mid-way, such as an inpainting shard written atomically)."""

    def _on_signal(self, signum, frame):
        raise Interrupted(signal.Signals(signum).name)
