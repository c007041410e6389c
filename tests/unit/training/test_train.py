"""Tests of strdiffusion/training/trainer.py: objectives by hand, resume exactness, loss decrease, checkpoints (DDP: test_ddp.py)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from support.training import SIZE, T, ZeroUNet, assert_same_weights, cli_args, env_cpu, make_data, random_batch

from strdiffusion.core.objectives import critic_loss, denoiser_loss
from strdiffusion.core.sde import IRSDE
from strdiffusion.models import checkpoints as checkpoints
from strdiffusion.stages.train import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("train_data"))


# ---------------------------------------------------------------------- objectives by hand


def hand_loss(x0, mu, noise, t, m, sde, l2=False):
    """Zero predicted noise: p = x_t - theta_t (mu - x_t) dt; q = x*_{t-1}; known + 10 * hole, per sample."""
    dt = float(sde.dt)
    total = 0.0
    for b in range(x0.shape[0]):
        tb = int(t[b])
        cs, cs1, th = (float(sde.thetas_cumsum[tb]), float(sde.thetas_cumsum[tb - 1]), float(sde.thetas[tb]))
        sbar = float(np.sqrt(sde.lam**2 * (1 - np.exp(-2 * cs * dt))))
        xt = mu[b] + (x0[b] - mu[b]) * np.exp(-cs * dt) + sbar * noise[b]
        p = xt - th * (mu[b] - xt) * dt
        A, B, C = np.exp(-th * dt), np.exp(-cs * dt), np.exp(-cs1 * dt)
        q = A * (1 - C**2) / (1 - B**2) * (xt - mu[b]) + C * (1 - A**2) / (1 - B**2) * (x0[b] - mu[b]) + mu[b]
        d = (p - q) ** 2 if l2 else (p - q).abs()
        total += float((d * m[b]).mean() + 10 * (d * (1 - m[b])).mean())
    return total / x0.shape[0]


@pytest.mark.parametrize("kind", ["structure", "texture", "irsde"])
@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_denoiser_loss_matches_hand_computation(kind, loss):
    sde = IRSDE(T=T)
    batch = random_batch()
    net = ZeroUNet()
    got = float(denoiser_loss(net, sde, batch, kind, loss))
    m = batch["mask"]
    if kind == "structure":
        x0, mu, noise = batch["gray"], batch["edge"] * m, batch["noise_s"]
    else:
        x0, mu, noise = batch["image"], batch["image"] * m, batch["noise"]
    expected = hand_loss(x0.double(), mu.double(), noise.double(), batch["t"], m.double(), sde, l2=loss == "l2")
    assert got == pytest.approx(expected, rel=1e-4)
    call = net.calls[0]
    assert torch.equal(call["cond"], mu)  # the UNet's condition is the SDE mean mu
    assert torch.equal(call["time"].reshape(-1), batch["t"])
    if kind == "texture":
        # guidance: the structure's optimal step from a structure sample at t, as the reference trains
        s_t = sde.forward_marginal(batch["gray"], batch["edge"] * m, batch["t"], batch["noise_s"])
        want = sde.optimal_prev(s_t, batch["gray"], batch["edge"] * m, batch["t"])
        assert torch.allclose(call["guidance"], want)
    else:
        assert call["guidance"] is None


class LinearCritic(nn.Module):
    """D(t, x, S) = sum of w * x + mean(S) * t / T: a known, differentiable critic."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-3, 3, 3 * 8 * 8).reshape(1, 3, 8, 8))

    def forward(self, t, x_t, structure):
        return (x_t * self.w).flatten(1).sum(1) + structure.flatten(1).mean(1) * t.float() / T


def test_critic_loss_matches_hand_computation():
    sde = IRSDE(T=T)
    batch = random_batch(B=3)
    critic = LinearCritic()
    got = float(critic_loss(critic, sde, batch).detach())
    m, t, x0 = batch["mask"], batch["t"], batch["image"]
    mu = x0 * m
    xt = sde.forward_marginal(x0, mu, t, batch["noise"])
    x_prev = sde.optimal_prev(xt, x0, mu, t)
    s_t = sde.forward_marginal(batch["gray"], batch["edge"] * m, t, batch["noise_s"])
    s = sde.optimal_prev(s_t, batch["gray"], batch["edge"] * m, t)
    with torch.no_grad():
        real, fake = critic(t, x_prev, s), critic(t, xt, s)
        anchor = critic(t, x_prev * m + xt * (1 - m), s)
    # triplet margin 1 on one-dimensional scores, per sample (pairwise_distance adds eps 1e-6)
    triplet = torch.clamp((anchor - real + 1e-6).abs() - (anchor - fake + 1e-6).abs() + 1.0, min=0).mean()
    expected = F.softplus(-real).mean() + F.softplus(fake).mean() + triplet
    assert got == pytest.approx(float(expected), rel=1e-5)


# ---------------------------------------------------------------------- resume

@pytest.mark.slow
def test_resume_texture_after_kill(data, tmp_path):
    """kill -9 a texture run after its first saved state; re-running it ends with identical weights."""
    n = 12
    ref_out = tmp_path / "ref" / "texture.pt"
    main(cli_args(data, ref_out, tmp_path / "ref" / "state", "texture", n))
    out, state = tmp_path / "run" / "texture.pt", tmp_path / "run" / "state"
    cmd = [sys.executable, "-m", "strdiffusion", "train", *cli_args(data, out, state, "texture", n)]
    proc = subprocess.Popen(cmd, env=env_cpu(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (state / "state.pt").exists() and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = int(torch.load(state / "state.pt", weights_only=True)["iteration"])
    assert 2 <= killed_at < n and not out.exists()
    result = subprocess.run(cmd, env=env_cpu(), capture_output=True, text=True, check=True)
    assert f"resuming from {state / 'state.pt'} at iteration {killed_at}" in result.stderr
    assert_same_weights(out, ref_out)
    assert checkpoints.load_checkpoint(out, kind="texture")[1]["resumes"] == [{"at": killed_at, "planned": n}]
    ref_losses = pd.read_csv(tmp_path / "ref" / "state" / "losses.csv")
    losses = pd.read_csv(state / "losses.csv")
    assert losses["iteration"].tolist() == list(range(1, n + 1))
    assert np.array_equal(losses["loss"].to_numpy(), ref_losses["loss"].to_numpy())


def test_resume_critic_in_two_runs(data, tmp_path):
    """A critic run stopped at 6 of 10 iterations and continued equals an uninterrupted one.

    (Milestones are fractions of --iterations, so a constant lr keeps the two schedules equal.)
    """
    main(cli_args(data, tmp_path / "a" / "critic.pt", tmp_path / "a" / "state", "critic", 10, lr=1e-3, milestones=""))
    main(cli_args(data, tmp_path / "b" / "critic.pt", tmp_path / "b" / "state", "critic", 6, lr=1e-3, milestones=""))
    assert int(torch.load(tmp_path / "b" / "state" / "state.pt", weights_only=True)["iteration"]) == 6
    main(cli_args(data, tmp_path / "b" / "critic.pt", tmp_path / "b" / "state", "critic", 10, lr=1e-3, milestones=""))
    assert_same_weights(tmp_path / "a" / "critic.pt", tmp_path / "b" / "critic.pt")
    # the checkpoint says where its run resumed and what the earlier run had planned (its lr schedule)
    assert checkpoints.load_checkpoint(tmp_path / "a" / "critic.pt", kind="critic")[1]["resumes"] == []
    resumed = checkpoints.load_checkpoint(tmp_path / "b" / "critic.pt", kind="critic")[1]
    assert resumed["resumes"] == [{"at": 6, "planned": 6}]


def test_resume_restarts_when_settings_change(data, tmp_path):
    main(cli_args(data, tmp_path / "s.pt", tmp_path / "state", "structure", 2))
    main(cli_args(data, tmp_path / "s.pt", tmp_path / "state", "structure", 2, lr=5e-4))
    state = torch.load(tmp_path / "state" / "state.pt", weights_only=True)
    assert state["settings"]["lr"] == 5e-4 and int(state["iteration"]) == 2
    assert len(pd.read_csv(tmp_path / "state" / "losses.csv")) == 2


# ---------------------------------------------------------------------- learning, checkpoints

def test_structure_loss_decreases(tmp_path):
    """On a fixed tiny problem (two images, one mask) the structure loss falls clearly within 80 iterations."""
    tiny = make_data(tmp_path / "data", n_images=2, n_masks=1)
    main(cli_args(tiny, tmp_path / "structure.pt", tmp_path / "state", "structure", 80, lr=3e-3, milestones="",
                  ema=0, batch_size=8))
    loss = pd.read_csv(tmp_path / "state" / "losses.csv")["loss"].to_numpy()
    assert len(loss) == 80
    assert loss[-20:].mean() < 0.7 * loss[:20].mean()
    assert (tmp_path / "structure_loss.png").stat().st_size > 0


def test_checkpoint_metadata_and_ema(data, tmp_path):
    out, state_dir = tmp_path / "texture.pt", tmp_path / "state"
    main(cli_args(data, out, state_dir, "texture", 6, ema=0.9, sigma=2.5))
    net, meta = checkpoints.load_checkpoint(out, kind="texture", expect_sde={"T": T},
                                            ctor_kwargs={"nf": 8, "depth": 2})
    assert meta["sde"]["T"] == T and meta["iteration"] == 6 and meta["ema"] is True
    assert meta["structure_sigma"] == 2.5 and meta["image_size"] == SIZE
    state = torch.load(state_dir / "state.pt", weights_only=True)
    saved = net.state_dict()
    params = {k for k, _ in net.named_parameters()}
    assert all(torch.equal(saved[k], state["ema"][k]) for k in saved)
    assert any(not torch.equal(state["ema"][k], state["net"][k]) for k in params)
    # the learning rate followed the milestone at 0.5 of 6 iterations: 1e-3 for iterations 1-3, then 5e-4
    lrs = pd.read_csv(state_dir / "losses.csv")["lr"].to_numpy()
    assert np.allclose(lrs, [1e-3] * 3 + [5e-4] * 3)


def test_bad_inputs_are_user_errors(data, tmp_path, capsys):
    from strdiffusion.cli import main as cli

    assert cli(["train", *cli_args(data, tmp_path / "x.pt", tmp_path / "s", "structure", 2,
                                   batch_size=3, nproc=1)]) == 0
    bad = dict(data, structure=tmp_path / "nowhere")
    assert cli(["train", *cli_args(bad, tmp_path / "y.pt", tmp_path / "s2", "structure", 2)]) == 2
    assert "structure maps missing" in capsys.readouterr().err
