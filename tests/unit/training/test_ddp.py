"""DDP training of every network kind: two gloo processes on CPU against one process with the same global batch.

Rank r trains on its slice of each global batch and DDP averages the gradients, so after a few Adam steps rank 0's
weights equal the single-process weights up to float rounding of the gradient sum (order of the all-reduce).
Tolerance: 1e-4 absolute on every weight (a tenth of one Adam step at lr 1e-3), and the per-iteration losses
within 1e-5 relative. The critic's minibatch-stddev groups (sample b in group b % (B // 4)) match because rank r
takes the strided positions r, r + 2, ... of each global batch. The texture network's comparison is the resume
test's: its two-process run is stopped half-way and resumed.
"""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from support.training import cli_args, env_cpu, make_data

from strdiffusion.models import checkpoints as checkpoints
from strdiffusion.stages.train import main

ITERATIONS = 3
ATOL = 1e-4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("ddp_data"))


def _options(net: str) -> dict:
    # the critic's minibatch-stddev groups of 4 need 4 images per process to see the single-process groups
    return {"batch_size": 8 if net == "critic" else 4, "ema": 0, "val_count": 0, "milestones": "", "threads": 2}


def _ddp(data, root, net: str, iterations: int) -> subprocess.CompletedProcess:
    """The training command a profile runs for `gpu: 2`: --nproc 2 relaunches under torch.distributed.run."""
    args = cli_args(data, root / f"{net}.pt", root / "state", net, iterations, nproc=2, **_options(net))
    res = subprocess.run([sys.executable, "-m", "strdiffusion", "train", *args], env=env_cpu(), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _assert_close_weights(a, b, net: str) -> None:
    sa = checkpoints.load_checkpoint(a, kind=net)[0].state_dict()
    sb = checkpoints.load_checkpoint(b, kind=net)[0].state_dict()
    assert sa.keys() == sb.keys()
    worst = max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)
    assert worst <= ATOL, worst


@pytest.mark.slow
@pytest.mark.parametrize("net", ["structure", "critic", "irsde"])
def test_ddp_two_processes_equal_one_process_with_the_global_batch(data, tmp_path, net):
    single = tmp_path / "single"
    main(cli_args(data, single / f"{net}.pt", single / "state", net, ITERATIONS, **{**_options(net), "threads": 1}))
    if net == "critic":
        # The critic's last conv starts at zero, so all scores are equal and the score bias's first gradient is
        # zero but for rounding, which Adam's first step turns into +-lr: the two runs share that first step.
        main(cli_args(data, tmp_path / "first" / f"{net}.pt", tmp_path / "ddp" / "state", net, 1,
                      **{**_options(net), "threads": 1}))
    res = _ddp(data, tmp_path / "ddp", net, ITERATIONS)
    per = _options(net)["batch_size"] // 2
    assert f"2 process(es), batch {per} per process, effective batch {2 * per}" in res.stderr
    one = pd.read_csv(single / "state" / "losses.csv")["loss"].to_numpy()
    two = pd.read_csv(tmp_path / "ddp" / "state" / "losses.csv")["loss"].to_numpy()
    assert len(one) == len(two) == ITERATIONS
    assert two == pytest.approx(one, rel=1e-5)
    _assert_close_weights(single / f"{net}.pt", tmp_path / "ddp" / f"{net}.pt", net)


@pytest.mark.slow
def test_ddp_texture_run_resumes_to_the_uninterrupted_weights(data, tmp_path):
    """A two-process texture run stopped after 2 iterations and re-run to 4 ends where one process running 4 does:
    the same losses at every iteration and the same weights."""
    net = "texture"
    single = tmp_path / "single"
    main(cli_args(data, single / f"{net}.pt", single / "state", net, 4, **{**_options(net), "threads": 1}))
    first = _ddp(data, tmp_path / "ddp", net, 2)
    per = _options(net)["batch_size"] // 2
    assert f"2 process(es), batch {per} per process, effective batch {2 * per}" in first.stderr
    again = _ddp(data, tmp_path / "ddp", net, 4)
    assert "at iteration 2" in again.stderr and "resuming from" in again.stderr
    meta = checkpoints.load_checkpoint(tmp_path / "ddp" / f"{net}.pt", kind=net)[1]
    assert meta["iteration"] == 4 and meta["resumes"] == [{"at": 2, "planned": 2}]
    losses = pd.read_csv(tmp_path / "ddp" / "state" / "losses.csv")
    assert losses["iteration"].tolist() == [1, 2, 3, 4]
    one = pd.read_csv(single / "state" / "losses.csv")["loss"].to_numpy()
    assert losses["loss"].to_numpy() == pytest.approx(one, rel=1e-5)
    _assert_close_weights(single / f"{net}.pt", tmp_path / "ddp" / f"{net}.pt", net)
