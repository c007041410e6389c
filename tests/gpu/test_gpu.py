"""The GPU lane: `pytest -m gpu` on a machine with CUDA (skipped, and counted apart, elsewhere).

- one training step per network in fp32, TF32, bf16 and fp16, with the precision the checkpoint records;
- the noise of an image on CUDA equal to its CPU noise, and the sampler on CUDA against the CPU on paper-size
  networks: mean |diff| <= 1e-3 and max |diff| <= 2e-2 (images in [0, 1], strict fp32, T 10, 64 px);
- a training killed on the GPU and resumed ends with the weights of an uninterrupted run (deterministic mode);
- deterministic mode gives byte-identical sampling and training twice.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from support.training import assert_same_weights, cli_args, make_data

from strdiffusion.models import checkpoints as checkpoints

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU lane: no CUDA device visible to torch")]

NETS = ("structure", "texture", "critic", "irsde")
PRECISIONS = {"fp32": [], "tf32": ["--tf32"], "bf16": ["--amp", "bf16"], "fp16": ["--amp", "fp16"]}
SAMPLER_MEAN_TOL, SAMPLER_MAX_TOL = 1e-3, 2e-2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("gpu_data"), n_images=4, n_masks=2, size=32)


def _cuda_env() -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "2"
    return env


def _train(data, root, net, iterations, *extra, check=True):
    args = [*cli_args(data, root / f"{net}.pt", root / "state", net, iterations, device="cuda", ema=0, val_count=2),
            *extra]
    res = subprocess.run([sys.executable, "-m", "strdiffusion", "train", *args], env=_cuda_env(),
                         capture_output=True, text=True, timeout=600)
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("net", NETS)
def test_gpu_training_step_each_network_and_precision(data, tmp_path, net, precision):
    res = _train(data, tmp_path, net, 2, *PRECISIONS[precision])
    assert "on cuda" in res.stderr
    _, meta = checkpoints.load_checkpoint(tmp_path / f"{net}.pt", kind=net)
    recorded = meta["precision"]
    assert recorded["amp"] == {"bf16": "bf16", "fp16": "fp16"}.get(precision, "none")
    assert recorded["tf32_matmul"] is recorded["tf32_cudnn"] is (precision == "tf32")
    import pandas as pd

    assert np.isfinite(pd.read_csv(tmp_path / "state" / "losses.csv")["loss"]).all()


def test_gpu_noise_of_an_image_is_its_cpu_noise():
    from strdiffusion.core.sampling import make_generators
    from strdiffusion.core.sde import randn_like_per_sample

    like = torch.zeros(3, 3, 40, 24)
    cpu = randn_like_per_sample(like, make_generators(7, ["a", "b", "c"], "10-20"))
    cuda = randn_like_per_sample(like.cuda(), make_generators(7, ["a", "b", "c"], "10-20"))
    torch.cuda.synchronize()
    assert cuda.device.type == "cuda" and torch.equal(cuda.cpu(), cpu)


def _paper_runner(tmp_path, device, deterministic=False, method="strdiffusion_noresample"):
    """A runner of paper-size networks (random weights, seeded) on ``device``, T 10."""
    from strdiffusion.core.sampling import SamplerConfig
    from strdiffusion.core.sde import IRSDE
    from strdiffusion.inpainting.diffusion import DiffusionRunner
    from strdiffusion.settings.jobs import RunSettings

    paths = {}
    for kind in ("structure", "texture", "critic"):
        path = tmp_path / f"{kind}.pt"
        if not path.exists():
            torch.manual_seed(1)
            kwargs = checkpoints.default_ctor_kwargs(kind)
            checkpoints.save_checkpoint(path, checkpoints.build_network(kind, **kwargs), kind, kwargs, IRSDE(T=10))
        paths[kind] = path
    return DiffusionRunner(method, paths, SamplerConfig(), RunSettings(device=device, batch_size=2,
                                                                        deterministic=deterministic))


def _images(n=2, px=64):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:px, 0:px]
    images = [np.dstack([(xx * 3 + 40 * i) % 256, (yy * 2) % 256, (xx + yy) % 256]).astype(np.uint8) for i in range(n)]
    masks = []
    for _ in range(n):
        m = np.ones((px, px), np.float32)
        a, b = rng.integers(0, px // 2, 2)
        m[a:a + px // 3, b:b + px // 3] = 0
        masks.append(m)
    return images, masks


def test_gpu_sampler_on_cuda_matches_cpu_on_paper_size_networks(tmp_path):
    images, masks = _images()
    ids = ["i0", "i1"]
    out = {}
    for device in ("cpu", "cuda"):
        runner = _paper_runner(tmp_path, device)
        out[device] = np.stack(runner.run(images, masks, [None, None], ids, "10-20")[0]).astype(np.float64) / 255
    diff = np.abs(out["cuda"] - out["cpu"])
    assert diff.mean() <= SAMPLER_MEAN_TOL and diff.max() <= SAMPLER_MAX_TOL, (diff.mean(), diff.max())


def test_gpu_deterministic_sampling_is_identical_twice(tmp_path):
    images, masks = _images()
    runs = [np.stack(_paper_runner(tmp_path, "cuda", deterministic=True, method="strdiffusion")
                     .run(images, masks, [None, None], ["i0", "i1"], "10-20")[0]) for _ in range(2)]
    assert np.array_equal(runs[0], runs[1])


def test_gpu_deterministic_training_is_identical_twice(data, tmp_path):
    for run in ("a", "b"):
        _train(data, tmp_path / run, "texture", 4, "--deterministic")
    assert_same_weights(tmp_path / "a" / "texture.pt", tmp_path / "b" / "texture.pt")


def test_gpu_training_killed_and_resumed_equals_uninterrupted(data, tmp_path):
    n = 12
    _train(data, tmp_path / "ref", "texture", n, "--deterministic")
    root = tmp_path / "run"
    args = [*cli_args(data, root / "texture.pt", root / "state", "texture", n, device="cuda", ema=0, val_count=2),
            "--deterministic"]
    proc = subprocess.Popen([sys.executable, "-m", "strdiffusion", "train", *args], env=_cuda_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (root / "state" / "state.pt").exists() and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = int(torch.load(root / "state" / "state.pt", weights_only=True)["iteration"])
    assert killed_at < n and not (root / "texture.pt").exists()
    res = subprocess.run([sys.executable, "-m", "strdiffusion", "train", *args], env=_cuda_env(),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and f"at iteration {killed_at}" in res.stderr, res.stderr[-3000:]
    assert_same_weights(root / "texture.pt", tmp_path / "ref" / "texture.pt")
