"""Tests of strdiffusion/core/sampling.py (the StrDiffusion reverse process and its batching, against
strdiffusion/core/sampling_reference.py) and of the inpaint stage's diffusion glue (strdiffusion/inpainting/run.py,
strdiffusion/inpainting/diffusion.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from support.images import write_pair

from strdiffusion.core.sampling import SamplerConfig, make_generators, net_callables, sample_irsde, sample_strdiffusion
from strdiffusion.core.sampling_reference import sample_reference_order
from strdiffusion.core.sde import IRSDE

REPO = Path(__file__).resolve().parents[3]
# small constants so that resampling triggers often at T = 20
SMALL = SamplerConfig(u_max=4, u_min=2, jump=2, re=2)


def _inputs(B=3, H=16, W=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(B, 3, H, W, generator=g)
    mask = (torch.rand(B, 1, H, W, generator=g) > 0.4).float()
    gray = image.mean(1, keepdim=True)
    edge = (torch.rand(B, 1, H, W, generator=g) > 0.8).float()
    return image, mask, gray, edge


# Cheap deterministic stand-ins for the networks: per-image (no mixing across the batch).
def fake_structure(s, mu, t):
    return torch.tanh(3 * (s - mu) + 0.01 * t)


def fake_texture(x, mu, t, guidance):
    g = 0 if guidance is None else guidance - 0.5
    return torch.tanh(2 * (x - mu) + g)


def fake_critic(t, x, s):
    return x.sin().sum((1, 2, 3)) * 7.3 + s.cos().sum((1, 2, 3)) * 3.1


class CountingCritic:
    """Scores every call higher than the last: 'lower' rejects every trial, 'higher' keeps all."""

    def __init__(self):
        self.n = 0

    def __call__(self, t, x, s):
        self.n += 1
        return torch.full((x.shape[0],), float(self.n))


def _ids(n):
    return [f"img{i}" for i in range(n)]


def _one_by_one(sample, image, mask, gray, edge, ids, seed=1, **kw):
    outs, trials = [], []
    for b in range(image.shape[0]):
        out, st = sample(image[b:b + 1], mask[b:b + 1], gray[b:b + 1], edge[b:b + 1],
                         make_generators(seed, ids[b:b + 1]), **kw)
        outs.append(out)
        trials.append(int(st["trials"][0]))
    return torch.cat(outs), trials


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny convolutions are dominated by thread synchronisation on a busy machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- tiny real networks

@pytest.fixture(scope="module")
def tiny_nets():
    from strdiffusion.models.checkpoints import build_network

    torch.manual_seed(0)
    structure = build_network("structure", nf=4, depth=2).eval()
    texture = build_network("texture", nf=4, depth=2).eval()
    critic = build_network("critic", ngf=4).eval()
    with torch.no_grad():  # a fresh critic scores almost constantly (zero-init layers); spread it out
        for p in critic.parameters():
            p.normal_(0, 0.3)
    return structure, texture, critic


def _real(tiny_nets):
    s_fn, t_fn, c_fn = net_callables(*tiny_nets)
    return s_fn, t_fn, c_fn


def test_batch_equals_one_by_one_with_real_nets(tiny_nets):
    sde = IRSDE(T=20)
    s_fn, t_fn, c_fn = _real(tiny_nets)
    image, mask, gray, edge = _inputs()
    ids = _ids(3)
    out, st = sample_strdiffusion(sde, s_fn, t_fn, c_fn, image, mask, gray, edge, make_generators(1, ids), SMALL)

    def one(*a, **kw):
        return sample_strdiffusion(sde, s_fn, t_fn, c_fn, *a, config=SMALL, **kw)

    single, trials = _one_by_one(one, image, mask, gray, edge, ids)
    assert trials == st["trials"].tolist()
    assert len(set(trials)) >= 2, f"images should take different resampling decisions, got trials {trials}"
    # every convolution and reduction of the nets is batch-size independent on CPU (nets.layers),
    # so the batched sampler reproduces the one-image runs and the reference-order loop bit for bit
    assert torch.equal(out, single), (out - single).abs().max()
    ref, st_ref = sample_reference_order(sde, s_fn, t_fn, c_fn, image, mask, gray, edge, make_generators(1, ids), SMALL)
    assert torch.equal(out, ref), (out - ref).abs().max()
    for key in ("structure_calls", "texture_calls", "trials", "accepted"):
        assert st[key].tolist() == st_ref[key].tolist(), key
    # the reference scores D_n at every early step, trials or not; the batched sampler only where it trials
    early = range(20, SMALL.switch_step(20) - 1, -1)             # t = 20 .. 8: 13 steps
    trial_steps = [t for t in early if SMALL.trial_steps(t, 20)]  # t % jump == 0: 7 steps
    assert (len(early), len(trial_steps)) == (13, 7)
    assert st_ref["critic_calls"].tolist() == [len(early) + n for n in st["trials"].tolist()]
    assert st["critic_calls"].tolist() == [len(trial_steps) + n for n in st["trials"].tolist()]


def test_batch_equals_one_by_one_reference_constants_T100():
    sde = IRSDE(T=100)
    image, mask, gray, edge = _inputs(B=4)
    ids = _ids(4)
    out, st = sample_strdiffusion(sde, fake_structure, fake_texture, fake_critic, image, mask, gray, edge,
                                  make_generators(7, ids))

    def one(*a, **kw):
        return sample_strdiffusion(sde, fake_structure, fake_texture, fake_critic, *a, **kw)

    single, trials = _one_by_one(one, image, mask, gray, edge, ids, seed=7)
    assert len(set(trials)) >= 2, trials
    torch.testing.assert_close(out, single, atol=1e-5, rtol=0)
    ref, _ = sample_reference_order(sde, fake_structure, fake_texture, fake_critic, image, mask, gray, edge,
                                    make_generators(7, ids))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_batch_images_that_stopped_draw_no_noise():
    # image 1 is scored so that it stops at the first rejected trial; image 0 keeps trialling.
    # If a stopped image still drew noise, its later steps would differ from sampling it alone.
    sde = IRSDE(T=20)

    calls = [0]

    def critic(t, x, s):  # bright images score ever higher (rejected), dark ones ever lower (kept)
        calls[0] += 1
        return torch.where(x.mean((1, 2, 3)) > 0.5, 1.0, -1.0) * calls[0]

    image, mask, gray, edge = _inputs(B=2)
    image[0] = image[0] * 0.2 + 0.8
    image[1] = image[1] * 0.2
    mask[:] = 1
    mask[:, :, 4:12, 4:12] = 0
    ids = _ids(2)
    out, st = sample_strdiffusion(sde, fake_structure, fake_texture, critic, image, mask, gray, edge,
                                  make_generators(3, ids), SMALL)

    def one(*a, **kw):
        return sample_strdiffusion(sde, fake_structure, fake_texture, critic, *a, config=SMALL, **kw)

    single, trials = _one_by_one(one, image, mask, gray, edge, ids, seed=3)
    assert trials[0] != trials[1]
    torch.testing.assert_close(out, single, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- seeds

def _run(image, mask, gray, edge, ids, seed, config=SMALL, T=20):
    return sample_strdiffusion(IRSDE(T=T), fake_structure, fake_texture, fake_critic, image, mask, gray, edge,
                               make_generators(seed, ids), config)[0]


def test_same_seed_same_result_different_seed_different_result():
    image, mask, gray, edge = _inputs()
    ids = _ids(3)
    a = _run(image, mask, gray, edge, ids, seed=5)
    b = _run(image, mask, gray, edge, ids, seed=5)
    c = _run(image, mask, gray, edge, ids, seed=6)
    assert torch.equal(a, b)
    hole = (mask < 0.5).expand_as(a)
    assert (a - c)[hole].abs().max() > 1e-3


def test_result_independent_of_batch_size_and_order():
    image, mask, gray, edge = _inputs(B=4)
    ids = _ids(4)
    full = _run(image, mask, gray, edge, ids, seed=2)
    perm = [2, 0, 3, 1]
    shuffled = _run(image[perm], mask[perm], gray[perm], edge[perm], [ids[i] for i in perm], seed=2)
    torch.testing.assert_close(shuffled, full[perm], atol=1e-6, rtol=0)
    halves = torch.cat([_run(image[:2], mask[:2], gray[:2], edge[:2], ids[:2], seed=2),
                        _run(image[2:], mask[2:], gray[2:], edge[2:], ids[2:], seed=2)])
    torch.testing.assert_close(halves, full, atol=1e-6, rtol=0)


def test_noise_follows_image_id_and_bin():
    a, b = make_generators(0, ["x", "x", "y"], "10-20"), make_generators(0, ["x"], "20-30")
    draws = [torch.randn(4, generator=g) for g in a + b]
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])
    assert not torch.equal(draws[0], draws[3])


# ----------------------------------------------------------------------------- the reverse process

def test_known_pixels_of_the_output_equal_the_input_exactly():
    image, mask, gray, edge = _inputs()
    out = _run(image, mask, gray, edge, _ids(3), seed=0)
    known = (mask > 0.5).expand_as(out)
    assert torch.equal(out[known], image[known])
    assert (out[~known] - image[~known]).abs().mean() > 1e-3  # holes are not copied from the input
    out_i, _ = sample_irsde(IRSDE(T=10), fake_texture, image, mask, make_generators(0, _ids(3)))
    assert torch.equal(out_i[known], image[known])


def test_network_calls_per_image_at_reference_constants_T100():
    sde = IRSDE(T=100)
    image, mask, gray, edge = _inputs(B=2)
    gens = lambda: make_generators(0, _ids(2))  # noqa: E731
    _, lo = sample_strdiffusion(sde, fake_structure, fake_texture, CountingCritic(), image, mask, gray, edge, gens())
    _, hi = sample_strdiffusion(sde, fake_structure, fake_texture, CountingCritic(), image, mask, gray, edge, gens(),
                                SamplerConfig(accept="higher"))
    _, mid = sample_strdiffusion(sde, fake_structure, fake_texture, fake_critic, image, mask, gray, edge, gens())
    calls = lambda st: (st["structure_calls"] + st["texture_calls"]).tolist()  # noqa: E731
    # 383 (every trial after the averaging ones rejected) to 531 (all u_max - 1 trials kept)
    assert calls(lo) == [383, 383]
    assert calls(hi) == [531, 531]
    assert all(383 <= c <= 531 for c in calls(mid))
    # the early stage t = 100..40 (61 steps) has one structure call each; 13 resampling steps
    assert lo["texture_calls"].tolist() == [100 + 13 * 3] * 2
    assert lo["critic_calls"].tolist() == [13 * (1 + 3)] * 2
    _, nr = sample_strdiffusion(sde, fake_structure, fake_texture, None, image, mask, gray, edge, gens(),
                                SamplerConfig(resample=False))
    assert nr["structure_calls"].tolist() == [61, 61] and nr["texture_calls"].tolist() == [100, 100]
    assert nr["critic_calls"].tolist() == [0, 0]
    _, ir = sample_irsde(sde, fake_texture, image, mask, gens())
    assert ir["texture_calls"].tolist() == [100, 100] and ir["structure_calls"].tolist() == [0, 0]


def test_acceptance_direction_keeps_different_trials():
    image, mask, gray, edge = _inputs(B=1)
    res = {}
    for accept in ("lower", "higher"):
        out, st = sample_strdiffusion(IRSDE(T=20), fake_structure, fake_texture, CountingCritic(), image, mask,
                                      gray, edge, make_generators(0, ["a"]), SamplerConfig(accept=accept, u_max=4,
                                                                                         u_min=2, jump=2, re=2))
        res[accept] = (out, st)
    assert res["lower"][1]["accepted"].item() == 0
    assert res["higher"][1]["accepted"].item() == res["higher"][1]["trials"].item() > 0
    assert not torch.allclose(res["lower"][0], res["higher"][0])
    # with 'lower' nothing is accepted: 1 averaged trial then 1 rejected trial per resampling step
    assert res["lower"][1]["trials"].item() == 2 * len([t for t in range(20, 7, -1) if t % 2 == 0])


def test_trials_are_compared_with_the_first_candidate_score():
    # D_n stays the score of the first candidate: trial 2 (-0.5) beats D_n = 0 although it is worse
    # than the kept trial 1 (-1). Per resampling step the critic returns, call by call:
    script = [0.0, -1.0, -0.5, -0.7, 5.0, -9.0]
    state = {"t": None, "k": 0}

    def critic(t, x, s):
        if t != state["t"]:
            state["t"], state["k"] = t, 0
        value = script[state["k"]]
        state["k"] += 1
        return torch.full((x.shape[0],), value)

    image, mask, gray, edge = _inputs(B=1)
    _, st = sample_strdiffusion(IRSDE(T=20), fake_structure, fake_texture, critic, image, mask, gray, edge,
                                make_generators(0, ["a"]), SamplerConfig(jump=5, re=2))
    n_steps = len([t for t in range(20, 7, -1) if t % 5 == 0])
    assert st["trials"].item() == 4 * n_steps  # the 4th trial (5.0) is rejected and stops
    assert st["accepted"].item() == 3 * n_steps


def test_without_trials_resampling_is_the_noresample_sampler():
    image, mask, gray, edge = _inputs()
    a = _run(image, mask, gray, edge, _ids(3), seed=4, config=SamplerConfig(u_max=1))
    b = sample_strdiffusion(IRSDE(T=20), fake_structure, fake_texture, None, image, mask, gray, edge,
                            make_generators(4, _ids(3)), SamplerConfig(resample=False))[0]
    assert torch.equal(a, b)
    c = _run(image, mask, gray, edge, _ids(3), seed=4)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("how", ["rgb_mean", "gray"])
def test_late_stage_guidance_is_derived_from_the_texture_state(how):
    T, seen = 20, []

    def texture(x, mu, t, guidance):
        seen.append((t, x.clone(), guidance.clone()))
        return fake_texture(x, mu, t, guidance)

    image, mask, gray, edge = _inputs(B=1)
    sample_strdiffusion(IRSDE(T=T), fake_structure, texture, fake_critic, image, mask, gray, edge,
                        make_generators(0, ["a"]), SamplerConfig(late_guidance=how))
    late = [(t, x, g) for t, x, g in seen if t < 8]  # int(0.4 * 20) = 8 is the last early step
    assert [t for t, _, _ in late] == list(range(7, 0, -1))
    w = torch.tensor([0.2125, 0.7154, 0.0721]).view(1, 3, 1, 1)
    for _, x, g in late:
        want = x.mean(1, keepdim=True) if how == "rgb_mean" else (x * w).sum(1, keepdim=True)
        torch.testing.assert_close(g, want)
    assert {t for t, _, _ in seen if t >= 8} == set(range(8, T + 1))


def test_structure_network_sees_the_known_structure_pasted():
    # at the first step, the known part of the structure input is the forward marginal of gray*m at T-1
    # (mean close to mu = edge*m since exp(-thetas_cumsum[T-1] dt) is small), not the start state
    first = []

    def structure(s, mu, t):
        if not first:
            first.append(s.clone())
        return fake_structure(s, mu, t)

    image, mask, gray, edge = _inputs(B=1, H=32, W=32)
    gens = make_generators(0, ["a"])
    sample_strdiffusion(IRSDE(T=20), structure, fake_texture, fake_critic, image, mask, gray, edge, gens)
    g = make_generators(0, ["a"])[0]
    sde = IRSDE(T=20)
    torch.randn(1, 3, 32, 32, generator=g)  # texture start
    start = sde.start_state(edge * mask, torch.randn(1, 1, 32, 32, generator=g))
    known = sde.forward_marginal(gray * mask, edge * mask, 19, torch.randn(1, 1, 32, 32, generator=g))
    want = torch.where(mask > 0.5, known, start)
    torch.testing.assert_close(first[0], want)


def test_sampling_is_unaffected_by_the_global_rng():
    image, mask, gray, edge = _inputs()
    torch.manual_seed(0)
    a = _run(image, mask, gray, edge, _ids(3), seed=9)
    torch.manual_seed(123)
    b = _run(image, mask, gray, edge, _ids(3), seed=9)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- CLI and pipeline glue

@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    from strdiffusion.models.checkpoints import build_network, save_checkpoint

    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    sde = IRSDE(T=8)
    for kind, kw in [("structure", {"nf": 4, "depth": 2}), ("texture", {"nf": 4, "depth": 2}),
                     ("irsde", {"nf": 4, "depth": 2}), ("critic", {"ngf": 4})]:
        net = build_network(kind, **kw)
        if kind == "critic":
            with torch.no_grad():
                for p in net.parameters():
                    p.normal_(0, 0.3)
        save_checkpoint(d / f"{kind}.pt", net, kind, kw, sde)
    return d



def _cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "strdiffusion", "inpaint", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300, env=env)


def test_cli_inpaints_an_odd_sized_image_and_keeps_known_pixels(tmp_path, checkpoint_dir):
    image, mask, img_p, mask_p = write_pair(tmp_path)
    out = tmp_path / "o.png"
    r = _cli("--image", img_p, "--mask", mask_p, "--checkpoints", checkpoint_dir, "--out", out, "--T", 8,
             "--u-max", 3, "--u-min", 2, "--jump", 2, "--re", 2)
    assert r.returncode == 0, r.stderr
    result = np.asarray(Image.open(out))
    assert result.shape == (29, 37, 3)
    known = mask < 128
    assert np.array_equal(result[known], image[known])
    assert np.abs(result[~known].astype(int) - image[~known]).mean() > 5


def test_own_images_reject_a_wrong_T_and_a_mask_of_another_size(tmp_path, checkpoint_dir):
    from strdiffusion.io.errors import UserError
    from strdiffusion.stages.inpaint import main

    _, _, img_p, mask_p = write_pair(tmp_path)
    with pytest.raises(UserError, match="T=8.*T=100"):
        main(["--image", str(img_p), "--mask", str(mask_p), "--checkpoints", str(checkpoint_dir),
              "--out", str(tmp_path / "o.png"), "--T", "100"])
    Image.fromarray(np.zeros((30, 37), np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(UserError, match="37x30.*37x29"):
        main(["--image", str(img_p), "--mask", str(tmp_path / "bad.png"), "--checkpoints", str(checkpoint_dir),
              "--out", str(tmp_path / "o.png")])
    with pytest.raises(UserError, match="critic"):
        main(["--image", str(img_p), "--mask", str(mask_p), "--texture-checkpoint",
              str(checkpoint_dir / "texture.pt"), "--structure-checkpoint", str(checkpoint_dir / "structure.pt"),
              "--out", str(tmp_path / "o.png")])
    assert not (tmp_path / "o.png").exists()


def test_user_images_folder_mode_and_mask_without_holes(tmp_path, checkpoint_dir):
    from strdiffusion.stages.inpaint import main

    imgs, masks = tmp_path / "imgs", tmp_path / "masks"
    a, _, _, am = write_pair(imgs, "a", size=(16, 16), hole=(slice(4, 9), slice(4, 9)))
    b, _, _, bm = write_pair(imgs, "b", size=(16, 16), hole=(slice(0, 0), slice(0, 0)))
    masks.mkdir()
    for name, p in (("a", am), ("b", bm)):
        p.rename(masks / f"{name}.png")
    with pytest.warns(UserWarning, match="no hole"):
        main(["--method", "strdiffusion_noresample", "--image", str(imgs), "--mask", str(masks),
              "--checkpoints", str(checkpoint_dir), "--out", str(tmp_path / "out")])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "b.png")), b)
    res_a = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    assert res_a.shape == a.shape and not np.array_equal(res_a, a)


def test_pipeline_rows_do_not_depend_on_the_batch_size(tmp_path, checkpoint_dir):
    from strdiffusion.stages.inpaint import main

    gt = tmp_path / "gt"
    rows = []
    for i in range(3):
        write_pair(gt, f"im{i}", size=(16, 16), hole=(slice(2 + i, 10), slice(3, 12)))
        rows.append({"image_id": f"im{i}", "bin": "10-20", "mask": str(gt / f"im{i}_mask.png")})
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame(rows).to_csv(pairs, index=False)
    outs = []
    for bs in (1, 3):
        out = tmp_path / f"shard_bs{bs}"
        main(["--method", "strdiffusion", "--pairs", str(pairs), "--bin", "10-20", "--gt-dir", str(gt),
              "--shard", "0", "--shard-size", "3", "--seed", "1", "--batch-size", str(bs), "--T", "8",
              "--u-max", "3", "--u-min", "2", "--jump", "2", "--re", "2", "--save-structure",
              "--structure-checkpoint", str(checkpoint_dir / "structure.pt"),
              "--texture-checkpoint", str(checkpoint_dir / "texture.pt"),
              "--critic-checkpoint", str(checkpoint_dir / "critic.pt"), "--out", str(out)])
        outs.append(out)
        assert sorted(p.name for p in out.glob("*.png")) == ["im0.png", "im1.png", "im2.png"]
        assert (out / "structure" / "im0.png").is_file()
    for i in range(3):
        a = np.asarray(Image.open(outs[0] / f"im{i}.png")).astype(int)
        b = np.asarray(Image.open(outs[1] / f"im{i}.png")).astype(int)
        assert np.array_equal(a, b)  # the nets are batch-size independent on CPU (nets.layers)


@pytest.mark.parametrize("T, tol", [(20, 0.03), (100, 0.005)])
def test_oracle_noise_predictor_recovers_the_hole(T, tol):
    """With the true noise as the 'network', both samplers must reconstruct the ground truth in the
    hole: this pins the reverse-process maths (score sign, drift, step order), not just consistency."""
    from strdiffusion.core.sampling import make_generators, sample_irsde, sample_strdiffusion
    from strdiffusion.core.sde import IRSDE

    sde = IRSDE(T=T)
    img = torch.rand(2, 3, 8, 8).repeat_interleave(4, 2).repeat_interleave(4, 3)
    mask = torch.ones(2, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 0
    gray = img.mean(1, keepdim=True)
    edge = (gray > 0.5).float()
    hole = (1 - mask).bool().expand_as(img)
    out, _ = sample_irsde(sde, lambda x, mu, t, g: sde.real_noise(x, img, mu, t), img, mask,
                          make_generators(0, ["a", "b"]))
    assert (out - img).abs()[hole].mean() < tol < img[hole].mean() / 10
    out, _ = sample_strdiffusion(sde, lambda s, mu_s, t: sde.real_noise(s, gray, mu_s, t),
                                 lambda x, mu, t, g: sde.real_noise(x, img, mu, t),
                                 lambda t, x, s: torch.zeros(x.shape[0]), img, mask, gray, edge,
                                 make_generators(0, ["a", "b"]))
    assert (out - img).abs()[hole].mean() < tol


def test_clipped_share_counts_hole_pixels_outside_the_unit_range():
    from strdiffusion.core.sampling import clipped_share

    x = torch.full((2, 3, 4, 4), 0.5)
    m = torch.ones(2, 1, 4, 4)
    m[:, :, :2] = 0  # 8 hole pixels per image
    x[0, 1, 0, 0] = 1.2          # hole, one channel out of range
    x[0, :, 1, 1] = -0.1         # hole, all channels
    x[0, 0, 3, 3] = 7.0          # known pixel: ignored
    x[1, 2, 1, 2] = float("nan")  # not finite counts as clipped
    assert clipped_share(x, m).tolist() == pytest.approx([2 / 8, 1 / 8])


def test_irsde_samples_with_the_hole_fill_it_was_trained_with(tmp_path, checkpoint_dir):
    """A checkpoint trained with IR-SDE's recipe (holes 1) is sampled with holes 1, whatever --hole-fill says;
    the pipeline shard records each image's clipped share."""
    from strdiffusion.core.sampling import SamplerConfig
    from strdiffusion.inpainting.diffusion import DiffusionRunner, RunSettings
    from strdiffusion.inpainting.run import CLIPPED_CSV
    from strdiffusion.models.checkpoints import load_checkpoint, save_checkpoint
    from strdiffusion.stages.inpaint import main

    net, meta = load_checkpoint(checkpoint_dir / "irsde.pt")
    save_checkpoint(tmp_path / "irsde.pt", net, "irsde", meta["ctor_kwargs"], meta["sde"], {"hole_fill": 1.0})
    runner = DiffusionRunner("irsde", {"irsde": tmp_path / "irsde.pt"}, SamplerConfig(hole_fill=0.0),
                             RunSettings(device="cpu"))
    assert runner.hole_fill == 1.0
    untagged = DiffusionRunner("irsde", {"irsde": checkpoint_dir / "irsde.pt"}, SamplerConfig(hole_fill=0.0),
                               RunSettings(device="cpu"))
    assert untagged.hole_fill == 0.0
    gt = tmp_path / "gt"
    write_pair(gt, "im0", size=(16, 16), hole=(slice(2, 10), slice(3, 12)))
    pd.DataFrame([{"image_id": "im0", "bin": "10-20", "mask": str(gt / "im0_mask.png")}]).to_csv(
        tmp_path / "pairs.csv", index=False)
    out = tmp_path / "shard"
    main(["--method", "irsde", "--pairs", str(tmp_path / "pairs.csv"), "--bin", "10-20", "--gt-dir", str(gt),
          "--shard", "0", "--shard-size", "1", "--T", "8", "--irsde-checkpoint", str(tmp_path / "irsde.pt"),
          "--out", str(out)])
    clipped = pd.read_csv(out / CLIPPED_CSV, dtype={"image_id": str})
    assert clipped["image_id"].tolist() == ["im0"] and clipped["clipped"].between(0, 1).all()
