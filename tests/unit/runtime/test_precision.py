"""strdiffusion/runtime/precision.py: TF32 and determinism honoured both ways in training and sampling (and recorded in
checkpoints and shards); fp16 loss scaling skips overflowing steps, recovers its scale and stops a run that
only overflows. Runs on CPU: the flags are torch's process-wide settings, and the mixed-precision logic runs
with CPU autocast and ``torch.amp.GradScaler("cpu")``."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch
import torch.nn as nn
from support.images import write_pair
from support.training import cli_args, make_data

from strdiffusion.io.errors import UserError
from strdiffusion.models import checkpoints as checkpoints
from strdiffusion.runtime import precision as precision
from strdiffusion.runtime.precision import MAX_SKIPPED, MixedPrecision


@pytest.fixture(autouse=True)
def restore_flags(monkeypatch):
    """Each test starts from the opposite of what it asks for and leaves torch's flags as it found them."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[0], saved[1]
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
    torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])


def _set_opposite(tf32: bool, deterministic: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not tf32
    torch.backends.cudnn.deterministic = not deterministic
    torch.use_deterministic_algorithms(not deterministic)


def _expect(effect: dict, tf32: bool, deterministic: bool) -> None:
    assert effect["tf32_matmul"] is tf32 and effect["tf32_cudnn"] is tf32
    assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
    assert effect["deterministic"] is deterministic
    assert torch.backends.cudnn.deterministic is deterministic
    assert torch.are_deterministic_algorithms_enabled() is deterministic
    assert (os.environ.get("CUBLAS_WORKSPACE_CONFIG") == precision.CUBLAS_WORKSPACE) is deterministic


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("precision_data"), n_images=2, n_masks=1)


# ---------------------------------------------------------------------- training


@pytest.mark.parametrize("flag,on,net", [("tf32", True, "structure"), ("tf32", False, "structure"),
                                         ("deterministic", True, "critic"), ("deterministic", False, "critic")],
                         ids=["tf32-on", "tf32-off", "deterministic-on", "deterministic-off"])
def test_train_precision_flag_both_ways_and_recorded(data, tmp_path, flag, on, net):
    from strdiffusion.stages.train import main

    tf32, deterministic = (on, False) if flag == "tf32" else (False, on)
    _set_opposite(tf32, deterministic)
    assert main([*cli_args(data, tmp_path / "n.pt", tmp_path / "state", net, 1, ema=0, val_count=0,
                           batch_size=2), *([f"--{flag}"] if on else [])]) == 0
    meta = checkpoints.load_checkpoint(tmp_path / "n.pt", kind=net)[1]
    _expect(meta["precision"], tf32, deterministic)
    _expect(precision.in_effect(), tf32, deterministic)
    assert meta["precision"]["amp"] == "none" and meta["precision"]["skipped_steps"] == 0


def test_train_tf32_and_deterministic_come_from_the_config():
    from strdiffusion.settings.jobs import TrainSettings, job_options

    cfg = {"train": {"iterations": 5, "tf32": True, "critic_lr": 1e-4, "critic_betas": [0.5, 0.99]},
           "run": {"deterministic": True}}
    s = TrainSettings.from_config(cfg, "texture")
    assert s.tf32 and s.deterministic
    assert "--tf32" in job_options("train", cfg, net="texture").split()
    assert "--deterministic" in job_options("train", cfg, net="texture").split()
    off = {"train": {"iterations": 5, "critic_lr": 1e-4, "critic_betas": [0.5, 0.99]}}
    assert not {"--tf32", "--deterministic"} & set(job_options("train", off, net="texture").split())


# ---------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def irsde_checkpoint(tmp_path_factory):
    from strdiffusion.core.sde import IRSDE

    path = tmp_path_factory.mktemp("ckpt") / "irsde.pt"
    torch.manual_seed(0)
    checkpoints.save_checkpoint(path, checkpoints.build_network("irsde", nf=4, depth=2), "irsde",
                                {"nf": 4, "depth": 2}, IRSDE(T=4))
    return path


@pytest.mark.parametrize("tf32,deterministic", [(True, False), (False, True), (False, False), (True, True)])
def test_sampling_tf32_and_deterministic_both_ways_in_the_shard(irsde_checkpoint, tmp_path, tf32, deterministic):
    """The inpaint stage sets both flags as asked, whatever torch held before, and writes them into the shard."""
    from strdiffusion.inpainting.run import PRECISION_JSON
    from strdiffusion.stages.inpaint import main

    _set_opposite(tf32, deterministic)
    gt = tmp_path / "gt"
    write_pair(gt, "im0", size=(16, 16), hole=(slice(2, 10), slice(3, 12)))
    pd.DataFrame([{"image_id": "im0", "bin": "10-20", "mask": str(gt / "im0_mask.png")}]).to_csv(
        tmp_path / "pairs.csv", index=False)
    out = tmp_path / "shard"
    flags = [f for f, on in (("--tf32", tf32), ("--deterministic", deterministic)) if on]
    main(["--method", "irsde", "--pairs", str(tmp_path / "pairs.csv"), "--bin", "10-20", "--gt-dir", str(gt),
          "--shard", "0", "--shard-size", "1", "--T", "4", "--irsde-checkpoint", str(irsde_checkpoint),
          "--device", "cpu", *flags, "--out", str(out)])
    recorded = json.loads((out / PRECISION_JSON).read_text())
    _expect(recorded, tf32, deterministic)
    assert recorded["device"] == "cpu" and recorded["autocast"] == "none"
    assert (out / "im0.png").is_file()


# ---------------------------------------------------------------------- mixed precision


class _Scaled(nn.Module):
    """A linear layer whose loss gradient at its fp16 output is ``factor`` times the loss scale."""

    def __init__(self, factor: float):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 4)
        self.factor = factor

    def loss(self, mp: MixedPrecision) -> torch.Tensor:
        x = torch.linspace(-0.5, 0.5, 4).view(1, 4)  # one sample: the bias gradient equals the output gradient
        with mp.autocast():
            out = self.lin(x)
        assert out.dtype == mp.dtype
        return out.float().sum() * self.factor


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_amp_fp16_overflow_step_is_skipped_and_the_scale_recovers():
    """At scale 2**17 the fp16 gradient 0.75 * 2**17 overflows (> 65504): the step is skipped, the weights and
    Adam's state stay, the scale halves; two good steps later it has grown back."""
    model = _Scaled(0.75)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    mp = MixedPrecision("fp16", "cpu", init_scale=2.0 ** 17, growth_interval=2)
    before = _weights(model)
    loss = model.loss(mp)
    assert torch.isfinite(loss)
    assert mp.step(loss, opt, model.parameters(), iteration=1) is False
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(model)))
    assert not opt.state and mp.scaler.get_scale() == 2.0 ** 16 and mp.skipped == 1
    assert mp.step(model.loss(mp), opt, model.parameters(), iteration=2) is True
    assert mp.skipped == 0 and not all(torch.equal(a, b) for a, b in zip(before, _weights(model)))
    assert mp.step(model.loss(mp), opt, model.parameters(), iteration=3) is True
    assert mp.scaler.get_scale() == 2.0 ** 17  # recovered after growth_interval good steps
    assert mp.step(model.loss(mp), opt, model.parameters(), iteration=4) is False  # and overflows again
    assert mp.skipped_total == 2


def test_amp_fp16_skipped_steps_in_a_row_stop_with_one_line_naming_bf16():
    """Gradients that overflow fp16 at any reachable scale: every step is skipped; the MAX_SKIPPED-th stops."""
    model = _Scaled(1e30)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    mp = MixedPrecision("fp16", "cpu")
    before = _weights(model)
    for i in range(1, MAX_SKIPPED):
        loss = model.loss(mp)
        assert torch.isfinite(loss)
        assert mp.step(loss, opt, model.parameters(), iteration=i) is False
    with pytest.raises(UserError) as err:
        mp.step(model.loss(mp), opt, model.parameters(), iteration=MAX_SKIPPED)
    msg = str(err.value)
    assert "\n" not in msg and "fp16 overflow" in msg and "bf16" in msg and f"{MAX_SKIPPED} training steps" in msg
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(model)))


def test_amp_bf16_steps_without_a_scaler():
    model = _Scaled(1e6)  # a gradient beyond fp16's range (65504) fits bf16's: no loss scale, no skipped step
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    mp = MixedPrecision("bf16", "cpu")
    assert not mp.scaler.is_enabled()
    before = _weights(model)
    assert mp.step(model.loss(mp), opt, model.parameters()) is True
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(before, _weights(model)))


def test_configure_leaves_the_compiler_unloaded_when_determinism_stays_off():
    """Determinism off is torch's default: setting it again must not import torch's compiler configuration (over a
    second in every metric, inpainting and training job); turning it on still reaches torch, warn-only."""
    import subprocess
    import sys

    code = ("import sys, torch; from strdiffusion.runtime import precision; precision.configure(False, False); "
            "off = 'torch._inductor' in sys.modules; precision.configure(False, True); "
            "print(off, torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True"], out
