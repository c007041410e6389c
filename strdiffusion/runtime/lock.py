"""One writer per state: a lock file that names its holder (host, PID, SLURM job id).

A training run holds ``STATE_DIR/writer.lock`` and an inpainting job ``SHARD.lock`` (beside its output folder)
while it writes. A second writer refuses to start while the holder lives, with one line naming it; a lock whose
holder is gone is taken over. Whether a holder lives is decided, in this order, by its PID when it ran on this
host (with the process's start time, so a reused PID does not count), by ``squeue`` when it ran in a SLURM job
elsewhere, and otherwise by its heartbeat: the holder touches the file every ``heartbeat`` seconds, and a lock
untouched for ``stale_after`` seconds is stale. The lock is released on every exit path short of SIGKILL
(a normal end, an error, an interrupt); after SIGKILL the next writer takes the stale lock over.

With ``history``, every take-over, take and release is appended to a log file (one line each, UTC time first),
so overlapping writers would show there.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

from strdiffusion.io.errors import UserError

log = logging.getLogger("strdiffusion.lock")

# squeue states of a job whose processes may still write
LIVE_SLURM_STATES = {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "CONFIGURING", "SIGNALING", "STAGE_OUT",
                     "RESIZING"}


class LockHeld(UserError):
    """Another live writer holds the lock (``holder``: its record, when readable)."""

    holder: dict = {}


def _host() -> str:
    return socket.gethostname()


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def me() -> dict:
    """This process as a lock holder."""
    pid = os.getpid()
    return {"host": _host(), "pid": pid, "start": _start_time(pid), "slurm_job": os.environ.get("SLURM_JOB_ID", ""),
            "since": _now()}


def describe(holder: dict) -> str:
    job = f"SLURM job {holder['slurm_job']}, " if holder.get("slurm_job") else ""
    return f"{job}pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"


def holder_alive(holder: dict, age: float, stale_after: float) -> bool:
    """Whether the process that wrote ``holder`` may still write (``age``: seconds since its last heartbeat)."""
    if holder.get("host") == _host() and isinstance(holder.get("pid"), int):
        pid = holder["pid"]
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        start = _start_time(pid)
        return holder.get("start") is None or start is None or start == holder["start"]
    if holder.get("slurm_job"):
        try:
            res = subprocess.run(["squeue", "-h", "-j", str(holder["slurm_job"]), "-o", "%T"], capture_output=True,
                                 text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            res = None
        if res is not None and res.returncode == 0:
            return res.stdout.strip() in LIVE_SLURM_STATES
        if res is not None and "Invalid job id" in res.stderr:
            return False
    return age < stale_after


class StateLock:
    """Context manager holding ``path`` for this process; raises :class:`LockHeld` while a live writer holds it.

    ``what`` names the protected thing in messages (e.g. the state folder).
    """

    def __init__(self, path, what: str | None = None, history=None, heartbeat: float = 60.0,
                 stale_after: float = 600.0):
        self.path = Path(path)
        self.what = what or str(self.path.parent)
        self.history = Path(history) if history else None
        self.heartbeat, self.stale_after = heartbeat, stale_after
        self.record: dict | None = None
        self.outcome = ""  # how the holder's work ended, for the release line
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- files -----------------------------------------------------------------------------------------------
    def _read(self) -> tuple[dict | None, float]:
        """The holder's record and the seconds since its heartbeat; ({}, age) for an unreadable file."""
        try:
            text = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None, 0.0
        try:
            record = json.loads(text)
        except ValueError:
            record = {}
        return (record if isinstance(record, dict) else {}), age

    def _note(self, event: str, holder: dict, outcome: str = "") -> None:
        what = describe(holder) + (f" ({outcome})" if outcome else "")
        line = f"{_now()} {event} {what}"
        log.info("lock %s: %s %s", self.path, event, what)
        if self.history is not None:
            with contextlib.suppress(OSError), open(self.history, "a") as f:
                f.write(line + "\n")

    @contextlib.contextmanager
    def _guard(self):
        """Serialise the check-and-take of writers on this host (flock on the lock's folder)."""
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _create(self, record: dict) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record) + "\n")
        return True

    # -- taking and releasing --------------------------------------------------------------------------------
    def acquire(self, quiet: bool = False) -> "StateLock":
        """Take the lock, or raise :class:`LockHeld` while a live writer holds it (``quiet``: without a
        history line for the refusal, for the polls of :meth:`acquire_waiting`)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = me()
        with self._guard():
            for _ in range(3):
                if self._create(record):
                    break
                holder, age = self._read()
                if holder is None:
                    continue  # released meanwhile
                if holder.get("pid") == record["pid"] and holder.get("host") == record["host"] \
                        and holder.get("start") == record["start"]:
                    raise RuntimeError(f"{self.path} is already held by this process")
                # an unreadable record is a writer between creating the file and writing it, unless it is old
                if holder_alive(holder, age, self.stale_after) if holder else age < 10:
                    if not quiet:
                        self._note("refused to", record, f"held by {describe(holder)}" if holder else "")
                    held = LockHeld(f"{self.what} is in use by {describe(holder)} (lock {self.path}); wait for that "
                                    f"job to end, or stop it{' (scancel ' + holder['slurm_job'] + ')' if holder.get('slurm_job') else ''}, then re-run")
                    held.holder = holder
                    raise held
                self._note("took over the stale lock of", holder or {"pid": "?", "host": "?"})
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            else:
                raise LockHeld(f"{self.path}: cannot take the lock; remove it if no job uses {self.what}")
        self.record = record
        self._note("taken by", record)
        self._thread = threading.Thread(target=self._beat, name="state-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def acquire_waiting(self, wait: float, say, poll: float = 2.0, every: float = 600.0) -> "StateLock":
        """:meth:`acquire`, waiting at most ``wait`` seconds while a live writer holds the lock (a job's
        ``--lock-wait``: 0 refuses at once, as :meth:`acquire`; negative waits as long as the holder lives):
        ``say`` gets one line when the wait starts and again every ``every`` seconds; then the refusal is raised.
        A holder that ends releases the lock; one that dies leaves it stale, and either way the wait ends."""
        timeout = None if wait < 0 else wait
        start = last = time.monotonic()
        waiting = False
        while True:
            try:
                return self.acquire(quiet=waiting)
            except LockHeld as exc:
                waited = time.monotonic() - start
                if timeout is not None and waited >= timeout:
                    raise
                if not waiting or time.monotonic() - last >= every:
                    say(f"{self.what} is in use by {describe(exc.holder)} (lock {self.path}); waiting for it to "
                        f"end ({waited:.0f} s so far)" if exc.holder else f"{exc}; waiting")
                    waiting, last = True, time.monotonic()
            time.sleep(poll)

    def _ours(self) -> bool:
        holder, _ = self._read()
        return bool(holder) and all(holder.get(k) == self.record.get(k) for k in ("host", "pid", "start", "since"))

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with contextlib.suppress(OSError):
                if self._ours():
                    os.utime(self.path)

    def release(self) -> None:
        if self.record is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if self._ours():  # never remove a lock that another writer took over
                self.path.unlink()
                self._note("released by", self.record, self.outcome)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("could not release %s: %s", self.path, exc)
        self.record = None

    def __enter__(self) -> "StateLock":
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
