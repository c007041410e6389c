"""What the UNets output (train.parameterization): the reference's noise, or x0 (the small-budget recipe).

objectives.denoiser_loss (x0: hole-weighted distance on x0 = mu + output), sampling.as_noise_fn (x0 output ->
the noise the reverse process needs), the checkpoint metadata and the inpaint stage's runner.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.training import cli_args, make_data, random_batch

from strdiffusion.core import objectives
from strdiffusion.core.sampling import SamplerConfig, as_noise_fn, make_generators, sample_irsde, sample_strdiffusion
from strdiffusion.core.sde import IRSDE
from strdiffusion.inpainting.diffusion import DiffusionRunner, RunSettings
from strdiffusion.models.checkpoints import load_checkpoint
from strdiffusion.settings.config import read_layer
from strdiffusion.stages import train as train_stage

ROOT = Path(__file__).resolve().parents[3]
T = 10


class OracleX0(torch.nn.Module):
    """A 'UNet' that knows the clean image: outputs x0 - mu (the x0 parameterisation's target)."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, mu, t, guidance=None):
        return self.x0 - mu


def test_fidelity_parameterization_is_noise_by_default_and_in_the_paper_configs():
    defaults = train_stage.parse_args(["--net", "texture", "--images", "i", "--structure", "s", "--masks", "m",
                                 "--out", "o.pt", "--state-dir", "d", "--iterations", "1"])
    assert defaults.settings.parameterization == "noise"
    for name in ("psv", "celebahq", "places2"):
        section = read_layer(ROOT / "config" / "paper" / f"{name}.yaml")["train"]
        assert section["parameterization"] == "noise" and section["irsde_recipe"] == "irsde", name


def test_x0_objective_is_zero_for_the_clean_image_and_hole_weighted_otherwise():
    sde, batch = IRSDE(T=T), random_batch()
    x0, m = batch["image"], batch["mask"]
    assert float(objectives.objective(OracleX0(x0), sde, batch, "texture", parameterization="x0")) == 0.0
    # the noise objective of the same oracle output is not zero: the parameterisation is what changes the loss
    assert float(objectives.objective(OracleX0(x0), sde, batch, "texture")) > 0.01

    class Zero(torch.nn.Module):
        def forward(self, x, mu, t, guidance=None):
            return torch.zeros_like(x)

    # output 0 means x0_hat = mu = image on known pixels, 0 in holes: loss = 10 x mean |image| over the holes
    got = float(objectives.objective(Zero(), sde, batch, "texture", parameterization="x0"))
    expected = float((10 * (x0 * (1 - m)).abs().flatten(1).mean(1)).mean())
    assert got == pytest.approx(expected, rel=1e-6)


def test_as_noise_fn_gives_the_true_noise_for_the_true_x0():
    sde = IRSDE(T=T)
    g = torch.Generator().manual_seed(0)
    x0, mu, noise = torch.rand(3, 3, 8, 8, generator=g), torch.rand(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    fn = OracleX0(x0)
    for t in (1, T // 2, T):
        xt = sde.forward_marginal(x0, mu, t, noise)
        assert torch.allclose(as_noise_fn(fn, sde, "x0")(xt, mu, t), noise, atol=1e-4)
    t = torch.tensor([1, 4, T])  # per-sample timesteps, as in resampling
    xt = sde.forward_marginal(x0, mu, t, noise)
    assert torch.allclose(as_noise_fn(fn, sde, "x0")(xt, mu, t, None), noise, atol=1e-4)
    assert as_noise_fn(fn, sde, "noise") is fn
    with pytest.raises(ValueError, match="parameterization"):
        as_noise_fn(fn, sde, "v")


def test_the_sampler_with_an_oracle_x0_network_rebuilds_the_hole():
    sde = IRSDE(T=20)
    g = torch.Generator().manual_seed(1)
    image = 0.1 + 0.8 * torch.rand(2, 3, 16, 16, generator=g)  # inside (0, 1): the last step's noise stays in range
    mask = torch.ones(2, 1, 16, 16)
    mask[..., 4:12, 4:12] = 0
    out, stats = sample_irsde(sde, as_noise_fn(OracleX0(image), sde, "x0"), image, mask,
                              make_generators(0, ["a", "b"]), hole_fill=0.0)
    hole = (1 - mask).expand_as(image).bool()
    assert (out - image).abs()[hole].mean() < 0.02 and float(stats["clipped"].max()) < 0.01
    # the same oracle read as a noise predictor is wrong: the conversion is what makes it work
    wrong, _ = sample_irsde(sde, OracleX0(image), image, mask, make_generators(0, ["a", "b"]), hole_fill=0.0)
    assert (wrong - image).abs()[hole].mean() > 0.1


def test_x0_training_records_it_and_the_runner_reads_it(tmp_path):
    data = make_data(tmp_path / "data", n_images=8, n_masks=2)
    for name, extra in (("x0", {"parameterization": "x0"}), ("noise", {})):
        out = tmp_path / name / "irsde.pt"
        train_stage.main(cli_args(data, out, tmp_path / name / "state", "irsde", 2, ema=0, val_count=2, **extra))
        _, meta = load_checkpoint(out, kind="irsde")
        assert meta["parameterization"] == name
        assert len(meta["curve"]["iteration"]) >= 2  # the learning curve scored the x0 network too
        runner = DiffusionRunner("irsde", {"irsde": out}, SamplerConfig(resample=False), RunSettings(device="cpu"))
        assert runner.parameterization == {"irsde": name}


def test_denoise_last_ends_on_the_x0_estimate_without_the_last_steps_noise():
    """sampling.denoise_last: the oracle's fill is exact (the reference's last step leaves noise of std
    sigma_1 sqrt(dt), 0.018 at T 20, which pushes near-black pixels below 0); off by default and in the
    paper configs."""
    sde = IRSDE(T=20)
    g = torch.Generator().manual_seed(2)
    image = torch.rand(2, 3, 16, 16, generator=g)
    image[0, :, :8] = 0.0  # a black region inside the hole
    mask = torch.ones(2, 1, 16, 16)
    mask[..., 2:12, 3:13] = 0
    hole = (1 - mask).expand_as(image).bool()
    fn = as_noise_fn(OracleX0(image), sde, "x0")
    exact, st = sample_irsde(sde, fn, image, mask, make_generators(0, ["a", "b"]), denoise_last=True)
    noisy, sn = sample_irsde(sde, fn, image, mask, make_generators(0, ["a", "b"]))
    assert (exact - image).abs()[hole].max() < 1e-4 and float(st["clipped"].max()) == 0.0
    assert (noisy - image).abs()[hole].mean() > 0.005 and float(sn["clipped"][0]) > 0.1
    for config in (SamplerConfig(resample=False, denoise_last=True), SamplerConfig(resample=False)):
        gray, edge = image.mean(1, keepdim=True), torch.zeros(2, 1, 16, 16)
        out, _ = sample_strdiffusion(sde, lambda s, mu, t: torch.zeros_like(s),
                                     lambda x, mu, t, guidance: fn(x, mu, t), None, image, mask, gray, edge,
                                     make_generators(0, ["a", "b"]), config)
        error = float((out - image).abs()[hole].max())
        assert (error < 1e-4) == config.denoise_last, error
    assert SamplerConfig().denoise_last is False
    for name in ("psv", "celebahq", "places2"):
        section = read_layer(ROOT / "config" / "paper" / f"{name}.yaml")["sampling"]
        assert section["denoise_last"] is False, name
