"""Numerics of a run: TF32, determinism and mixed precision, set the same way by training, sampling and metrics.

:func:`configure` sets torch's process-wide flags both ways (``tf32: false`` also turns off cuDNN's TF32,
which torch enables by default) and returns what is in effect, which checkpoints and shards record.
TF32 only exists on CUDA (Ampere and newer); on CPU the flags are set but change nothing.

:class:`MixedPrecision` is one training step's autocast and loss scaling. ``fp16`` scales the loss
(``torch.amp.GradScaler``): a step whose scaled gradients overflow is skipped and the scale halved, and
it grows again after ``growth_interval`` good steps. :data:`MAX_SKIPPED` skipped steps in a row stop the
run: the gradients overflow fp16 at any scale, and bf16 (fp32's range) is the fix. ``bf16`` needs no
scaler. The class takes the device type, so its logic runs on CPU (CPU autocast, ``GradScaler("cpu")``)
as on CUDA.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from strdiffusion.io.errors import UserError

# Consecutive fp16 steps skipped for overflowing gradients before the run stops. From the initial scale
# 2**16, 16 halvings reach a scale of 1; 24 more mean gradients beyond fp16's range even when scaled down
# 2**24-fold, which no further halving fixes.
MAX_SKIPPED = 40

# cuBLAS's deterministic workspace setting (needed on CUDA >= 10.2 with deterministic algorithms)
CUBLAS_WORKSPACE = ":4096:8"


def configure(tf32: bool, deterministic: bool) -> dict:
    """Set TF32 and determinism for this process, both ways; returns the settings in effect.

    ``deterministic``: cuDNN's deterministic kernels without autotuning, ``torch.use_deterministic_algorithms``
    (an operation without a deterministic kernel warns and runs anyway) and ``CUBLAS_WORKSPACE_CONFIG``,
    which must be set before cuBLAS starts: call this before the first CUDA operation.
    """
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)
    torch.backends.cudnn.deterministic = bool(deterministic)
    torch.backends.cudnn.benchmark = False
    # only on a change: the call imports torch's compiler configuration (over a second per job) even to turn
    # determinism off, which is torch's default
    if torch.are_deterministic_algorithms_enabled() != bool(deterministic) or \
            (deterministic and not torch.is_deterministic_algorithms_warn_only_enabled()):
        torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    return in_effect()


def in_effect() -> dict:
    """The TF32 and determinism flags torch holds now (recorded in checkpoints and shards)."""
    return {"tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
            "deterministic": bool(torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic),
            "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG", "")}


class MixedPrecision:
    """Autocast and loss scaling of one training run: ``amp`` is none, bf16 or fp16; ``device_type`` cpu or cuda."""

    DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, amp: str, device_type: str, max_skipped: int = MAX_SKIPPED, **scaler_kwargs):
        self.amp, self.device_type, self.max_skipped = amp, device_type, max_skipped
        self.dtype = self.DTYPES[amp]
        self.scaler = torch.amp.GradScaler(device_type, enabled=amp == "fp16", **scaler_kwargs)
        self.skipped = 0  # consecutive skipped steps
        self.skipped_total = 0

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def step(self, loss: torch.Tensor, optimizer, params, grad_clip: float = 0.0, iteration: int = 0) -> bool:
        """Backward of ``loss`` and one optimiser step; returns False when fp16 overflow skipped it.

        Raises a UserError after :data:`MAX_SKIPPED` skipped steps in a row."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if grad_clip > 0:
            self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, grad_clip)
        if not self.scaler.is_enabled():
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        # the scaler lowers its scale exactly when it found inf/nan gradients and skipped the step
        if self.scaler.get_scale() >= before:
            self.skipped = 0
            return True
        self.skipped += 1
        self.skipped_total += 1
        if self.skipped >= self.max_skipped:
            raise UserError(f"fp16 overflow: {self.skipped} training steps in a row skipped for non-finite scaled "
                            f"gradients (up to iteration {iteration}, loss scale now {self.scaler.get_scale():.3g}); "
                            "use --amp bf16 (train.amp: bf16) or --amp none, then re-run")
        return False
