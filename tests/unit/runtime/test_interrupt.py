"""Tests of strdiffusion/runtime/signals.py: a training stopped by SIGTERM or SIGUSR1 saves its state at the next
iteration boundary, exits with status 75, and resumes to exactly the weights of an uninterrupted run."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from support.training import assert_same_weights, cli_args, env_cpu, make_data

from strdiffusion.runtime.signals import INTERRUPTED, parse_slurm_time
from strdiffusion.stages.train import main

ITERATIONS = 12


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("interrupt_data"))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted run; periodic states only at the end, so a resumed run can only start from a notice."""
    root = tmp_path_factory.mktemp("reference")
    main(cli_args(data, root / "structure.pt", root / "state", "structure", ITERATIONS, checkpoint_every=1000))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_save_on_signal_resumes_to_identical_weights(sig, data, reference, tmp_path):
    out, state = tmp_path / "structure.pt", tmp_path / "state"
    cmd = [sys.executable, "-m", "strdiffusion", "train",
           *cli_args(data, out, state, "structure", ITERATIONS, checkpoint_every=1000)]
    proc = subprocess.Popen(cmd, env=env_cpu(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen = []
    for line in proc.stderr:  # the handlers are in place once the run logs its set-up
        seen.append(line)
        if "training structure on cpu" in line:
            break
    proc.send_signal(sig)
    err = "".join(seen) + proc.stderr.read()
    proc.wait(timeout=300)
    assert proc.returncode == INTERRUPTED, err[-3000:]
    saved = int(torch.load(state / "state.pt", weights_only=True)["iteration"])
    assert 1 <= saved < ITERATIONS and not out.exists()
    assert err.strip().splitlines()[-1] == (f"interrupted by {sig.name}; state saved at iteration {saved} in "
                                            f"{state / 'state.pt'}; re-run the same command to resume")
    assert not (state / "writer.lock").exists()  # released on the interrupt
    assert len(pd.read_csv(state / "losses.csv")) == saved

    again = subprocess.run(cmd, env=env_cpu(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {state / 'state.pt'} at iteration {saved}" in again.stderr
    assert_same_weights(out, reference / "structure.pt")
    ref_losses = pd.read_csv(reference / "state" / "losses.csv")["loss"].to_numpy()
    assert np.array_equal(pd.read_csv(state / "losses.csv")["loss"].to_numpy(), ref_losses)
    log = (state / "writer.log").read_text().splitlines()
    assert [line.split()[1] for line in log] == ["taken", "released", "taken", "released"]
    assert log[1].endswith(f"({sig.name}, state saved at iteration {saved})") and log[3].endswith("(finished)")


@pytest.mark.parametrize("text,seconds", [("1-02:03:04", 93784.0), ("02:03:04", 7384.0), ("3:04", 184.0),
                                          ("59", 59.0), ("0:00", 0.0), ("UNLIMITED", None), ("NOT_SET", None),
                                          ("INVALID", None), ("", None)])
def test_slurm_durations(text, seconds):
    assert parse_slurm_time(text) == seconds


@pytest.mark.slow
def test_inpaint_shard_on_signal_is_whole_or_absent(tmp_path):
    """SIGTERM in the middle of a shard: status 75, no output folder, no temporary folder, no lock left."""
    from strdiffusion.io.files import save_png_atomic

    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        save_png_atomic(tmp_path / "gt" / f"{i:03d}.png", rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
        mask = np.zeros((128, 128), np.uint8)
        mask[32:96, 32:96] = 255
        save_png_atomic(tmp_path / "masks" / f"{i:03d}.png", mask)
        rows.append({"image_id": f"{i:03d}", "bin": "10-20", "mask": str(tmp_path / "masks" / f"{i:03d}.png")})
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    out = tmp_path / "shard_0"
    proc = subprocess.Popen([sys.executable, "-m", "strdiffusion", "inpaint", "--method", "biharmonic", "--pairs",
                             str(tmp_path / "pairs.csv"), "--bin", "10-20", "--gt-dir", str(tmp_path / "gt"),
                             "--shard-size", "40", "--out", str(out)], env=env_cpu(), stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        tmp = [p for p in tmp_path.glob(".shard_0.tmp-*") if any(p.glob("*.png"))]
        if tmp:
            break
        time.sleep(0.05)
    assert tmp and proc.poll() is None, "the shard never started writing"
    assert (tmp_path / "shard_0.lock").exists()
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == INTERRUPTED, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted by SIGTERM"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt", "masks", "pairs.csv"]
