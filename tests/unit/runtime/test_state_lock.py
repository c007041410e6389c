"""Tests of strdiffusion/runtime/lock.py: a live holder blocks a second writer with one line naming it, a stale
lock is taken over, and the lock is released on every exit path short of SIGKILL."""
from __future__ import annotations

import contextlib
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


# ---- a restarted driver beside the killed driver's live training job -------------------------------------

@pytest.mark.slow
def test_state_lock_restarted_driver_waits_and_keeps_the_finished_model_and_curve(tmp_path):
    """A driver killed while its training job runs leaves the job running; the same command started again
    schedules that training once more. Its job waits for the older one (a line in its log and on the new
    driver's console) instead of failing, so Snakemake never deletes the `.pt` and curve the older job
    finishes, and the run ends well."""
    from pathlib import Path

    from support.workflow import SNAKEMAKE, TINY, make_workdir

    root = Path(__file__).resolve().parents[3]
    config = dict(TINY, methods=["irsde"], train={**TINY["train"], "iterations": 6})
    work = make_workdir(tmp_path / "work", root, config)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               OMP_NUM_THREADS="1")
    target = "results/builtin/models/irsde.pt"
    model, curve = work / target, work / "results/builtin/curves/irsde.csv"
    state = work / "results/builtin/models/irsde_state"
    lock, job_log = state / "writer.lock", work / "logs/builtin/train_irsde.log"
    command = [SNAKEMAKE, target, "--cores", "1", "--configfile", "tiny.yaml"]
    first_console, second_console = tmp_path / "first.txt", tmp_path / "second.txt"
    holder = None
    with open(first_console, "w") as out:
        first = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    second = None
    try:
        deadline = time.monotonic() + 300
        while holder is None:
            assert first.poll() is None and time.monotonic() < deadline, first_console.read_text()[-3000:]
            try:
                holder = json.loads(lock.read_text())["pid"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.1)
        os.kill(holder, signal.SIGSTOP)  # the older job holds the lock for as long as the test wants
        os.kill(first.pid, signal.SIGKILL)  # the driver dies; its job (another process) lives on
        first.wait()
        subprocess.run([*command, "--unlock"], cwd=work, env=env, capture_output=True, check=True, timeout=120)
        with open(second_console, "w") as out:
            second = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
        waiting = f"the training state {state.relative_to(work)} is in use by pid {holder} on {socket.gethostname()}"
        while waiting not in (job_log.read_text(errors="replace") if job_log.exists() else ""):
            assert second.poll() is None and time.monotonic() < deadline, second_console.read_text()[-3000:]
            time.sleep(0.2)
        assert not model.exists()
        os.kill(holder, signal.SIGCONT)  # the older job finishes its model and curve, then the new job goes on
        assert second.wait(timeout=300) == 0, second_console.read_text()[-3000:]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if holder is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(holder, signal.SIGCONT)
    console = second_console.read_text()
    assert f"strdiffusion: {waiting}" in console and "waiting for it to end" in console, console[-3000:]
    assert model.is_file() and curve.is_file()
    events = [(line.split()[1], line.split()[4]) for line in (state / "writer.log").read_text().splitlines()]
    waiter = events[1][1]
    assert events == [("taken", str(holder)), ("refused", waiter), ("released", str(holder)), ("taken", waiter),
                      ("released", waiter)], events
    assert curve.read_text().startswith("iteration,")


FINISH_SHARD = """import sys, time
from pathlib import Path
from strdiffusion.runtime.lock import StateLock
out = Path(sys.argv[1])
with StateLock(out.with_name(out.name + ".lock"), "the shard"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    out.mkdir()
    (out / "000.png").write_bytes(b"written by the older job")
"""


def _shard_command(root, out, *extra):
    return [sys.executable, "-m", "strdiffusion", "inpaint", "--method", "telea", "--pairs", str(root / "pairs.csv"),
            "--bin", "10-20", "--gt-dir", str(root / "gt"), "--out", str(out), *extra]


def test_state_lock_shard_job_waits_and_keeps_the_shard_the_older_job_finished(tmp_path):
    """An inpainting job beside a live job of an older driver on the same shard: with --lock-wait it waits, then
    keeps the shard that job finished (a failed job's output would be deleted by Snakemake); without, it refuses
    in one line and writes nothing. Run alone on a finished shard, it writes the shard again."""
    import numpy as np
    import pandas as pd

    from strdiffusion.io.files import save_png_atomic

    rng = np.random.default_rng(0)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 255
    save_png_atomic(tmp_path / "masks" / "m.png", mask)
    save_png_atomic(tmp_path / "gt" / "000.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    pd.DataFrame([{"image_id": "000", "bin": "10-20", "mask": str(tmp_path / "masks" / "m.png")}]).to_csv(
        tmp_path / "pairs.csv", index=False)
    out = tmp_path / "shard_0"
    older = subprocess.Popen([sys.executable, "-c", FINISH_SHARD, str(out), "4"], stdout=subprocess.PIPE, text=True,
                             env=env_cpu())
    try:
        assert older.stdout.readline().strip() == "held"
        refused = subprocess.run(_shard_command(tmp_path, out), capture_output=True, text=True, env=env_cpu(),
                                 timeout=120)
        assert refused.returncode != 0 and not out.exists()
        assert refused.stderr.strip().splitlines()[-1].startswith(f"error: the shard {out} is in use by pid "
                                                                  f"{older.pid}"), refused.stderr[-2000:]
        waited = subprocess.run(_shard_command(tmp_path, out, "--lock-wait", "-1"), capture_output=True, text=True,
                                env=env_cpu(), timeout=120)
    finally:
        older.wait(timeout=60)
    assert waited.returncode == 0, waited.stderr[-2000:]
    assert "waiting for it to end" in waited.stderr and "finished by the job that held its lock; kept" in waited.stderr
    assert (out / "000.png").read_bytes() == b"written by the older job"
    again = subprocess.run(_shard_command(tmp_path, out, "--lock-wait", "-1"), capture_output=True, text=True,
                           env=env_cpu(), timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "000.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "shard_0.lock").exists()
