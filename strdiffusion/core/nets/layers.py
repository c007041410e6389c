"""Layers shared by the nets: batch-size independent convolutions and products, a fast two-pass variance.

PyTorch's CPU convolution picks its kernel per call: for a batch of one with few pixels
(fewer than 20,480 input values and a kernel of at most 3x3) it uses its own im2col + GEMM
(``_slow_conv2d_forward``), otherwise oneDNN (mkldnn). The two sum in different orders, so the
same image gives outputs differing by ~1e-5 in a batch of one and in a batch of sixteen. Over a
hundred sampler steps that grows, and a batched sampler would not reproduce the one-image loop.

oneDNN's convolution computes each image of a batch the same way whatever the batch size, so
during inference (no autograd) on CPU in float32 every convolution here goes through it. Training,
CUDA, other dtypes and ``torch.compile`` graphs keep ``F.conv2d``'s own choice. The module is a
drop-in ``nn.Conv2d`` (same parameters and state-dict names).

Batched matrix products have the same trap: for one image and one attention head, a long product
(4,096 positions at 64 px) is split over the threads along its sum, while a batch is split by image,
so the sums differ in their last bit. :func:`matmul` multiplies image by image in CPU float32
inference, which makes each image's product the one it gets alone.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.dim() == 4 and x.layout == torch.strided and not torch.is_grad_enabled()
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and not torch.compiler.is_compiling())


def _inference_cpu_fp32(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling())


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` over a leading batch axis; batch-size independent in CPU float32 inference."""
    if a.dim() > 2 and a.shape[0] > 1 and _inference_cpu_fp32(a) and b.dtype == torch.float32:
        return torch.stack([a[i] @ b[i] for i in range(a.shape[0])])
    return a @ b


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` with integer zero padding; batch-size independent in CPU float32 inference."""
    if _use_onednn(x, weight):
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, _pair(padding), _pair(stride),
                                                 _pair(dilation), groups)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (zero padding only) computed by :func:`conv2d`."""

    def __init__(self, *conv_args, **conv_kwargs):
        super().__init__(*conv_args, **conv_kwargs)
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("strdiffusion.core.nets.layers.Conv2d supports integer zero padding only")

    def _conv_forward(self, x, weight, bias):
        return conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


def centred_var(x: torch.Tensor, dim: int, unbiased: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` minus its mean over ``dim``, and the variance over ``dim`` (kept as a size-1 axis).

    Two passes: the value of ``torch.var`` to float rounding, and 10-20x faster on CPU when ``dim``
    is a strided axis (the channel axis of NCHW, the sample axis of the critic's stddev group),
    where ``torch.var`` was a quarter of the tiny UNet's time.
    """
    centred = x - x.mean(dim, keepdim=True)
    return centred, (centred * centred).sum(dim, keepdim=True) / (x.shape[dim] - int(unbiased))
