"""Training defaults equal the reference code, non-finite losses, learning curves.

Each ``test_fidelity_*`` pins one point where an earlier version differed from the reference
(htyjers/StrDiffusion's trainers, IR-SDE's inpainting recipe); each would fail on that version.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from support.training import ZeroUNet, cli_args, make_data, random_batch

from strdiffusion.core import objectives
from strdiffusion.core.nets.critic import Critic
from strdiffusion.core.sde import IRSDE
from strdiffusion.settings.config import read_layer
from strdiffusion.stages import train as train_stage
from strdiffusion.training import data as training_data
from strdiffusion.training import trainer as train
from strdiffusion.training.learning_curve import hole_scores

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = [ROOT / "config" / "config.yaml", *sorted((ROOT / "config" / "paper").glob("*.yaml"))]
T = 10


def _train_section(path: Path) -> dict:
    return read_layer(path).get("train", {})  # with what it extends (config/paper/common.yaml)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("fidelity_data"), n_images=8, n_masks=3)


# ---------------------------------------------------------------------- 1. EMA

def test_fidelity_ema_off_and_raw_weights_saved(data, tmp_path):
    """The reference never updates its EMA and samples the raw weights: so do our defaults."""
    defaults = train_stage.parse_args(["--net", "structure", "--images", "i", "--structure", "s", "--masks", "m",
                                 "--out", "o.pt", "--state-dir", "d", "--iterations", "1"])
    assert defaults.settings.ema == 0
    for path in CONFIGS:
        if "ema" in _train_section(path):
            assert _train_section(path)["ema"] == 0, path
    args = cli_args(data, tmp_path / "s.pt", tmp_path / "state", "structure", 4, ema=0, val_count=0)
    train_stage.main(args)
    saved = torch.load(tmp_path / "s.pt", weights_only=True)["state_dict"]
    raw = torch.load(tmp_path / "state" / "state.pt", weights_only=True)["net"]
    assert all(torch.equal(saved[k], raw[k]) for k in saved)


def test_fidelity_ema_warmup_decay():
    net = torch.nn.Linear(2, 2)
    ema = train.EMA(net, 0.999, warmup=True)
    decays = []
    for _ in range(3):
        decays.append(ema.current_decay())
        ema.update(net)
    assert decays == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    assert train.EMA(net, 0.5, warmup=True).current_decay() == pytest.approx(0.1)
    ema.updates = 10 ** 6
    assert ema.current_decay() == 0.999


# ---------------------------------------------------------------------- 2. texture guidance

def test_fidelity_texture_guidance_is_optimal_step_from_t():
    """Reference texture trainer: structure sample at t, then its optimal step x*_{t-1}."""
    sde = IRSDE(T=T)
    batch = random_batch()
    net = ZeroUNet()
    objectives.objective(net, sde, batch, "texture")
    m, gray = batch["mask"], batch["gray"]
    s_t = sde.forward_marginal(gray, batch["edge"] * m, batch["t"], batch["noise_s"])
    want = sde.optimal_prev(s_t, gray, batch["edge"] * m, batch["t"])
    assert torch.equal(net.calls[0]["guidance"], want)
    marginal = sde.forward_marginal(gray, batch["edge"] * m, batch["t"] - 1, batch["noise_s"])
    assert not torch.allclose(net.calls[0]["guidance"], marginal)
    for path in CONFIGS:
        assert _train_section(path).get("guidance_state", "optimal") == "optimal", path


# ---------------------------------------------------------------------- 3. IR-SDE baseline recipe

def test_fidelity_irsde_recipe_plain_l1_holes_white():
    """IR-SDE's inpainting recipe: unweighted L1 matching loss, mu = image*m + (1-m)."""
    sde = IRSDE(T=T)
    batch = random_batch()
    net = ZeroUNet()
    got = float(objectives.objective(net, sde, batch, "irsde"))
    m, x0, t = batch["mask"], batch["image"], batch["t"]
    mu = x0 * m + (1 - m)
    assert torch.equal(net.calls[0]["cond"], mu)
    xt = sde.forward_marginal(x0, mu, t, batch["noise"])
    pred = sde.reverse_sde_step_mean(xt, mu, sde.score_from_noise(torch.zeros_like(xt), t), t)
    expected = float((pred - sde.optimal_prev(xt, x0, mu, t)).abs().mean())
    assert got == pytest.approx(expected, rel=1e-5)
    # the texture-style recipe stays available and differs (10x hole weight, holes 0)
    assert float(objectives.objective(ZeroUNet(), sde, batch, "irsde", recipe_name="reference")) != pytest.approx(got)


def test_fidelity_irsde_timesteps_include_one(data):
    irsde, _ = training_data.build_dataset(data["images"], data["structure"], data["masks"], 16, T, 0, "irsde",
                                   t_min=objectives.recipe("irsde")[1])
    texture, _ = training_data.build_dataset(data["images"], data["structure"], data["masks"], 16, T, 0, "texture",
                                     t_min=objectives.recipe("texture")[1])
    t_irsde = {int(irsde[p]["t"]) for p in range(300)}
    t_texture = {int(texture[p]["t"]) for p in range(300)}
    assert t_irsde == set(range(1, T + 1))
    assert t_texture == set(range(2, T + 1))


# ---------------------------------------------------------------------- 4. lr milestones

def test_fidelity_lr_milestones_are_fractions_of_the_run():
    fr = [0.25, 0.5, 0.75]
    lrs = [train.learning_rate(1.0, i, 8_000_000, fr) for i in (2_000_000, 2_000_001, 4_000_001, 6_000_001)]
    assert lrs == [1.0, 0.5, 0.25, 0.125]  # the reference's 2M, 4M, 6M of 8M
    # raising iterations moves the milestones with it
    assert train.learning_rate(1.0, 121, 160, [0.75]) == 0.5
    assert train.learning_rate(1.0, 121, 1600, [0.75]) == 1.0
    assert train.learning_rate(1.0, 1201, 1600, [0.75]) == 0.5
    # linear warm-up over a fraction
    assert train.learning_rate(1.0, 5, 100, [], warmup=0.1) == pytest.approx(0.5)
    for path in CONFIGS:
        for m in _train_section(path).get("lr_milestones", []):
            assert 0 < m < 1, path
    psv = _train_section(ROOT / "config" / "paper" / "psv.yaml")
    assert train.milestone_iterations(psv["lr_milestones"], psv["iterations"]) == [200_000, 400_000, 600_000]
    with pytest.raises(Exception, match="fractions"):
        train_stage.parse_args(["--net", "irsde", "--images", "i", "--structure", "s", "--masks", "m", "--out", "o",
                          "--state-dir", "d", "--iterations", "10", "--milestones", "120"])


# ---------------------------------------------------------------------- 5. max_sigma < 1

def test_fidelity_max_sigma_below_one_used_as_is():
    assert IRSDE(T=T, max_sigma=30.0).lam == pytest.approx(30 / 255)
    assert IRSDE(T=T, max_sigma=0.1).lam == pytest.approx(0.1)
    assert IRSDE(T=T, max_sigma=1.0).lam == pytest.approx(1 / 255)
    ref = IRSDE(T=T, max_sigma=0.1)
    assert float(ref.sigma_bars[-1]) == pytest.approx(0.1 * math.sqrt(1 - 0.005 ** 2), rel=1e-4)


# ---------------------------------------------------------------------- 6. critic init

def test_fidelity_critic_init_uses_fan_out():
    """The reference helper's 'fan_avg' returns fan_out: bound sqrt(3 / fan_out) for scale 1."""
    torch.manual_seed(0)
    critic = Critic(ngf=8)
    checked = 0
    for name, mod in critic.named_modules():
        if isinstance(mod, torch.nn.Linear) and mod.weight.shape[0] != mod.weight.shape[1]:
            fan_out, fan_in = mod.weight.shape
            bound_out, bound_avg = math.sqrt(3 / fan_out), math.sqrt(3 / ((fan_in + fan_out) / 2))
            w = mod.weight.detach().abs().max().item()
            if mod.weight.numel() < 64 or w < 1e-3:
                continue
            assert w <= bound_out * 1.0001, name
            assert w > 0.9 * bound_out, name  # a uniform draw of many values nearly reaches the bound
            assert abs(bound_out - bound_avg) > 0.1 * bound_out
            checked += 1
    assert checked >= 1


# ---------------------------------------------------------------------- non-finite loss

def test_nan_loss_stops_with_one_line_and_keeps_last_good_state(data, tmp_path, capsys, monkeypatch):
    from strdiffusion.cli import main as cli

    real = train.objective
    calls = {"n": 0}

    def diverging(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(train, "objective", diverging)
    out, state = tmp_path / "t.pt", tmp_path / "state"
    code = cli(["train", *cli_args(data, out, state, "texture", 8, ema=0, checkpoint_every=3, val_count=0)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: the texture loss became nan at iteration 5")
    assert "iteration 4" in err[-1] and str(state / "state.pt") in err[-1]
    assert not out.exists()
    saved = torch.load(state / "state.pt", weights_only=True)
    assert int(saved["iteration"]) == 4
    assert all(torch.isfinite(v).all() for v in saved["net"].values())
    assert len(pd.read_csv(state / "losses.csv")) == 4


# ---------------------------------------------------------------------- learning curves

def test_learning_curve_rows_metadata_and_resume(data, tmp_path):
    common = dict(ema=0, checkpoint_every=3, val_count=2, milestones="")
    train_stage.main(cli_args(data, tmp_path / "a.pt", tmp_path / "a", "irsde", 6, curve=tmp_path / "a.csv", **common))
    curve = pd.read_csv(tmp_path / "a.csv")
    assert curve["iteration"].tolist() == [0, 3, 6]
    assert {"seconds", "loss", "lr", "hole_psnr", "ssim", "clipped", "val_seconds"} <= set(curve.columns)
    assert curve["hole_psnr"].between(0, 100).all() and curve["clipped"].between(0, 1).all()
    assert math.isnan(curve["loss"][0]) and curve["loss"][1:].notna().all()
    meta = torch.load(tmp_path / "a.pt", weights_only=True)
    assert meta["curve"]["iteration"] == [0.0, 3.0, 6.0] and meta["hole_fill"] == 1.0 and meta["t_min"] == 1
    # provenance: the commit of this checkout and the settings the run was made with
    assert len(meta["commit"]) == 40 and meta["train_settings"]["iterations"] == 6
    # interrupted after 3 iterations and resumed: the same curve
    train_stage.main(cli_args(data, tmp_path / "b.pt", tmp_path / "b", "irsde", 3, curve=tmp_path / "b.csv", **common))
    train_stage.main(cli_args(data, tmp_path / "b.pt", tmp_path / "b", "irsde", 6, curve=tmp_path / "b.csv", **common))
    again = pd.read_csv(tmp_path / "b.csv")
    pd.testing.assert_frame_equal(curve.drop(columns=["seconds", "val_seconds"]),
                                  again.drop(columns=["seconds", "val_seconds"]))


def test_learning_curve_of_the_critic(data, tmp_path):
    train_stage.main(cli_args(data, tmp_path / "c.pt", tmp_path / "c", "critic", 4, ema=0, checkpoint_every=2,
                        val_count=2, curve=tmp_path / "c.csv"))
    curve = pd.read_csv(tmp_path / "c.csv")
    assert curve["iteration"].tolist() == [0, 2, 4]
    assert curve["auc"].between(0, 1).all() and curve["accuracy"].between(0, 1).all()


def test_hole_scores_known_values():
    target = torch.full((1, 3, 16, 16), 0.5)
    mask = torch.ones(1, 1, 16, 16)
    mask[..., 4:8, 4:8] = 0  # 16 hole pixels
    raw = target.clone()
    raw[..., 4:8, 4:8] = 0.6
    raw[:, :, 4, 4:8] = 1.5  # 4 of 16 hole pixels out of range, in every channel
    s = hole_scores(raw, target, mask)
    assert s["clipped"] == pytest.approx(4 / 16)
    mse = (12 * 0.1 ** 2 + 4 * 0.5 ** 2) / 16  # after clamping 1.5 -> 1.0
    assert s["hole_psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-4)
    assert hole_scores(target, target, mask)["ssim"] == pytest.approx(1.0)
