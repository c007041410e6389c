"""The hole value of the degraded input mu (train.hole_fill): the recipe's constant, or each image's mean
known colour, so that an x0 net that outputs nothing already gives the mean-colour fill.

sde.degraded, the objectives (denoisers and critic), the training metadata and the inpaint stage's runner.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support.training import cli_args, make_data, random_batch

from strdiffusion.core import objectives
from strdiffusion.core.sampling import SamplerConfig, as_noise_fn, make_generators, sample_irsde
from strdiffusion.core.sde import IRSDE, degraded
from strdiffusion.inpainting.diffusion import DiffusionRunner, RunSettings
from strdiffusion.inpainting.run import classical_inpaint
from strdiffusion.models.checkpoints import load_checkpoint
from strdiffusion.settings.config import read_layer
from strdiffusion.stages import train as train_stage

ROOT = Path(__file__).resolve().parents[3]


class Zero(torch.nn.Module):
    """An x0 'UNet' that outputs nothing: its x0 estimate is mu itself."""

    def forward(self, x, mu, t, guidance=None):
        return torch.zeros_like(x)


def test_degraded_fills_holes_with_each_images_known_mean_colour_or_a_constant():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 6, 5, generator=g)
    known = (torch.rand(2, 1, 6, 5, generator=g) > 0.5).float()
    known[1] = 0  # an image without known pixels
    mu = degraded(image, known, "mean")
    k = known[0, 0].bool()
    for c in range(3):
        assert torch.equal(mu[0, c][k], image[0, c][k])
        assert torch.allclose(mu[0, c][~k], image[0, c][k].mean().expand(int((~k).sum())), atol=1e-6)
    assert torch.all(mu[1] == 0.5)
    assert torch.equal(degraded(image, known, 1.0), image * known + (1 - known))
    assert torch.equal(degraded(image, known, 0.0), image * known)


def test_fidelity_hole_fill_is_the_recipes_by_default_and_in_the_paper_configs():
    defaults = train_stage.parse_args(["--net", "texture", "--images", "i", "--structure", "s", "--masks", "m",
                                 "--out", "o.pt", "--state-dir", "d", "--iterations", "1"])
    assert defaults.settings.hole_fill == "recipe"
    assert objectives.recipe_fill("texture", "irsde") == 0.0 and objectives.recipe_fill("irsde", "irsde") == 1.0
    for name in ("psv", "celebahq", "places2"):
        section = read_layer(ROOT / "config" / "paper" / f"{name}.yaml")["train"]
        assert section.get("hole_fill", "recipe") == "recipe", name


def test_mean_fill_changes_the_denoisers_and_critics_mu_but_not_the_structures():
    sde, batch = IRSDE(T=10), random_batch()
    x0, m = batch["image"], batch["mask"]
    # an x0 net with output 0 is scored against the mean-colour fill: 10 x mean |x0 - mean| over the holes
    got = float(objectives.objective(Zero(), sde, batch, "texture", parameterization="x0", fill="mean"))
    expected = float((10 * ((x0 - degraded(x0, m, "mean")) * (1 - m)).abs().flatten(1).mean(1)).mean())
    assert got == pytest.approx(expected, rel=1e-6)
    assert got != pytest.approx(float(objectives.objective(Zero(), sde, batch, "texture", parameterization="x0")))
    assert objectives.recipe_fill("structure", "irsde", "mean") == 0.0
    assert objectives.recipe_fill("critic", "irsde", "mean") == "mean"

    class Scores(torch.nn.Module):  # a 'critic' that reports the mean hole value of the state it is shown
        def forward(self, t, x, s, stddev_group=4):
            return (x * (1 - m)).flatten(1).mean(1)

    assert float(objectives.objective(Scores(), sde, batch, "critic", fill="mean")) != pytest.approx(
        float(objectives.objective(Scores(), sde, batch, "critic")))


def test_an_x0_net_that_outputs_nothing_samples_the_mean_colour_fill():
    """With holes at the mean colour, the untrained starting point of an x0 net is the mean-fill baseline
    (through the unchanged IR-SDE sampler); with holes at 0 it would be black holes."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    img[..., 0] = 200  # a strong, known colour
    mask = np.ones((16, 16), np.float32)
    mask[4:12, 3:11] = 0
    reference = classical_inpaint("mean_fill", img, mask).astype(np.float32) / 255
    image = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    known = torch.from_numpy(mask)[None, None]
    sde = IRSDE(T=20)
    fn = as_noise_fn(Zero(), sde, "x0")
    out, stats = sample_irsde(sde, fn, image, known, make_generators(0, ["a"]), hole_fill="mean")
    hole = torch.from_numpy(mask == 0)
    got = out[0].permute(1, 2, 0).numpy()[hole.numpy()]
    assert np.abs(got - reference[hole.numpy()]).mean() < 0.02
    black, _ = sample_irsde(sde, fn, image, known, make_generators(0, ["a"]), hole_fill=0.0)
    assert black[0].permute(1, 2, 0).numpy()[hole.numpy()].mean() < 0.05
    assert float(stats["clipped"][0]) == 0.0


@pytest.mark.parametrize("net", ["texture", "irsde", "critic"])
def test_training_with_mean_fill_is_recorded_and_sampled_with(tmp_path, net):
    data = make_data(tmp_path)
    out = tmp_path / f"{net}.pt"
    assert train_stage.main(cli_args(data, out, tmp_path / "state", net, 2, hole_fill="mean",
                               parameterization="x0", val_count=0)) == 0
    _, meta = load_checkpoint(out)
    assert meta["hole_fill"] == "mean"
    if net == "irsde":
        runner = DiffusionRunner("irsde", {"irsde": out}, SamplerConfig(hole_fill=0.0), RunSettings(device="cpu"))
        assert runner.hole_fill == "mean" and runner.config.hole_fill == "mean"
