"""Tests of strdiffusion/runtime/lock.py: a live holder blocks a second writer with one line naming it, a stale
lock is taken over, and the lock is released on every exit path short of SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from support.training import cli_args, env_cpu, make_data

from strdiffusion.runtime.lock import LockHeld, StateLock

HOLD = """import sys, time
from strdiffusion.runtime.lock import StateLock
with StateLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture()
def holder(tmp_path):
    """A live process holding ``tmp_path/state/writer.lock``."""
    lock = tmp_path / "state" / "writer.lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True, env=env_cpu())
    assert proc.stdout.readline().strip() == "held"
    yield proc, lock
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.mark.slow
def test_state_lock_live_holder_blocks_second_writer_in_one_line(holder, tmp_path):
    proc, lock = holder
    with pytest.raises(LockHeld) as info:
        StateLock(lock, "the training state X").acquire()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"the training state X is in use by pid {proc.pid} on {socket.gethostname()} since ")
    assert json.loads(lock.read_text())["pid"] == proc.pid  # untouched
    # a training on that state folder stops at once with that line, before writing anything
    data = make_data(tmp_path / "data", n_images=2, n_masks=1)
    res = subprocess.run([sys.executable, "-m", "strdiffusion", "train",
                          *cli_args(data, tmp_path / "s.pt", lock.parent, "structure", 2)],
                         env=env_cpu(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the training state {lock.parent} is in use by pid {proc.pid} on ")
    assert not (lock.parent / "state.pt").exists() and not (tmp_path / "s.pt").exists()


def test_state_lock_stale_lock_is_taken_over(holder, tmp_path):
    proc, lock = holder
    proc.send_signal(signal.SIGKILL)  # no chance to release
    proc.wait()
    assert json.loads(lock.read_text())["pid"] == proc.pid
    history = tmp_path / "writer.log"
    with StateLock(lock, history=history) as taken:
        assert json.loads(lock.read_text())["pid"] == os.getpid() == taken.record["pid"]
    lines = history.read_text().splitlines()
    assert f"took over the stale lock of pid {proc.pid} on " in lines[0]
    assert [line.split()[1] for line in lines[1:]] == ["taken", "released"]

    # a holder on another host without a SLURM job lives as long as its heartbeat: blocked, then stale
    other = {"host": "elsewhere.invalid", "pid": 1, "start": None, "slurm_job": "", "since": "then"}
    lock.write_text(json.dumps(other))
    with pytest.raises(LockHeld, match="pid 1 on elsewhere.invalid"):
        StateLock(lock, stale_after=600).acquire()
    old = time.time() - 601
    os.utime(lock, (old, old))
    with StateLock(lock, stale_after=600):
        assert json.loads(lock.read_text())["host"] == socket.gethostname()
    assert not lock.exists()


@pytest.mark.slow
def test_state_lock_released_on_every_exit_path(tmp_path):
    lock = tmp_path / "writer.lock"
    with StateLock(lock):
        assert lock.exists()
    assert not lock.exists()
    for exc in (ValueError("bug"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with StateLock(lock):
                raise exc
        assert not lock.exists()
    # a lock taken over by another writer is not removed by the one that lost it
    first = StateLock(lock).acquire()
    lock.write_text(json.dumps({"host": "elsewhere.invalid", "pid": 2, "since": "now"}))
    first.release()
    assert json.loads(lock.read_text())["pid"] == 2
    lock.unlink()
    # a training that fails on bad input, and one interrupted by SIGTERM, leave no lock behind
    data = make_data(tmp_path / "data", n_images=2, n_masks=1)
    bad = dict(data, structure=tmp_path / "nowhere")
    state = tmp_path / "state"
    res = subprocess.run([sys.executable, "-m", "strdiffusion", "train",
                          *cli_args(bad, tmp_path / "s.pt", state, "structure", 2)],
                         env=env_cpu(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "structure maps missing" in res.stderr, res.stderr[-2000:]
    assert not (state / "writer.lock").exists()
    assert [line.split()[1] for line in (state / "writer.log").read_text().splitlines()] == ["taken", "released"]
