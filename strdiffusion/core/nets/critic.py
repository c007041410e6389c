"""The time-conditioned critic of StrDiffusion's adaptive resampling.

A Denoising-Diffusion-GAN discriminator (Xiao et al. 2022, NVIDIA) as used by the reference
(``models/networks.py:Discriminator``), rewritten in plain PyTorch: the FIR downsampling that the
reference runs through ``upfirdn2d`` is a depthwise strided convolution here. Module names follow
the reference so that its state dicts load strictly.

Layout for ``ngf``: 1x1 stem to 2 ngf; four down blocks (2, 4, 8, 8 x ngf; the last three halve the
resolution); minibatch-stddev feature; 3x3 conv; LeakyReLU; spatial sum; linear to one score.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..constants import CRITIC_STDDEV_GROUP
from .layers import Conv2d, centred_var, conv2d


def _variance_scaling_(weight: torch.Tensor, scale: float) -> None:
    """The reference's "fan_avg" variance scaling (scale 0 means 1e-10).

    The reference's fan helper returns fan_in only for mode 'fan_in' and fan_out otherwise, so its
    'fan_avg' is in fact fan_out: var = scale / fan_out, uniform bound sqrt(3 var).
    """
    _, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    var = (1e-10 if scale == 0 else scale) / max(1.0, fan_out)
    bound = math.sqrt(3.0 * var)
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def _dense(dim_in: int, dim_out: int, init_scale: float = 1.0) -> nn.Linear:
    lin = nn.Linear(dim_in, dim_out)
    _variance_scaling_(lin.weight, init_scale)
    nn.init.zeros_(lin.bias)
    return lin


def _conv(dim_in: int, dim_out: int, kernel_size: int, padding: int, bias: bool = True,
          init_scale: float = 1.0) -> Conv2d:
    conv = Conv2d(dim_in, dim_out, kernel_size, padding=padding, bias=bias)
    _variance_scaling_(conv.weight, init_scale)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def timestep_embedding(t: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of a (B,) timestep tensor: (B, dim) float32, cat(sin, cos)."""
    half = dim // 2
    scale = math.log(max_positions) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -scale)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def fir_kernel_2d(taps: Sequence[float]) -> torch.Tensor:
    """Separable FIR taps -> normalised 2-D kernel (sums to 1)."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = torch.outer(k, k)
    return k / k.sum()


def fir_downsample_2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Blur with ``kernel`` (K x K, zero padding) and keep every second pixel.

    Same result as the reference's ``downsample_2d(x, k, factor=2)`` (upfirdn2d with down=2 and
    pad ((K - 2 + 1) // 2, (K - 2) // 2)): each channel is filtered independently.
    """
    c = x.shape[1]
    k = kernel.shape[-1]
    p = k - 2
    x = F.pad(x, ((p + 1) // 2, p // 2, (p + 1) // 2, p // 2))
    # Correlation with the flipped kernel is the convolution upfirdn2d computes.
    weight = torch.flip(kernel, (0, 1)).to(dtype=x.dtype).expand(c, 1, k, k)
    return conv2d(x, weight, stride=2, groups=c)


class TimestepEmbedding(nn.Module):
    def __init__(self, embedding_dim: int, hidden_dim: int, output_dim: int, act: nn.Module):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.main = nn.Sequential(_dense(embedding_dim, hidden_dim), act, _dense(hidden_dim, output_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.main(timestep_embedding(t, self.embedding_dim))


class DownConvBlock(nn.Module):
    """act -> conv -> + time -> act -> [FIR downsample] -> conv, plus a 1x1 skip; output / sqrt 2."""

    def __init__(self, dim_in: int, dim_out: int, t_emb_dim: int, act: nn.Module, downsample: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.downsample = downsample
        self.act = act
        self.conv1 = nn.Sequential(_conv(dim_in, dim_out, 3, padding=1))
        self.conv2 = nn.Sequential(_conv(dim_out, dim_out, 3, padding=1, init_scale=0.0))
        self.dense_t1 = _dense(t_emb_dim, dim_out)
        self.skip = nn.Sequential(_conv(dim_in, dim_out, 1, padding=0, bias=False))
        self.register_buffer("fir", fir_kernel_2d(fir_kernel), persistent=False)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.act(x))
        out = out + self.dense_t1(t_emb)[..., None, None]
        out = self.act(out)
        if self.downsample:
            out = fir_downsample_2d(out, self.fir)
            x = fir_downsample_2d(x, self.fir)
        out = self.conv2(out)
        return (out + self.skip(x)) / math.sqrt(2)


class Critic(nn.Module):
    """Score D(t, x_t, S): how real a texture state looks at time t given the structure S.

    Args:
        nc: input channels (texture 3 + structure 1). ngf: base width. t_emb_dim: time embedding size.
        negative_slope: of the LeakyReLU activations.
        stddev_group: minibatch-stddev group size (the reference uses min(4, B)); scores then depend
            on the other samples of the batch. See :meth:`forward`.
    """

    def __init__(self, nc: int = 4, ngf: int = 64, t_emb_dim: int = 256, negative_slope: float = 0.2,
                 stddev_group: int = CRITIC_STDDEV_GROUP, fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        act = nn.LeakyReLU(negative_slope)
        self.act = act
        self.stddev_group = stddev_group
        self.t_embed = TimestepEmbedding(t_emb_dim, t_emb_dim, t_emb_dim, act)
        self.start_conv = _conv(nc, ngf * 2, 1, padding=0)
        fir = tuple(fir_kernel)
        self.conv1 = DownConvBlock(ngf * 2, ngf * 2, t_emb_dim, act, fir_kernel=fir)
        self.conv2 = DownConvBlock(ngf * 2, ngf * 4, t_emb_dim, act, downsample=True, fir_kernel=fir)
        self.conv3 = DownConvBlock(ngf * 4, ngf * 8, t_emb_dim, act, downsample=True, fir_kernel=fir)
        self.conv4 = DownConvBlock(ngf * 8, ngf * 8, t_emb_dim, act, downsample=True, fir_kernel=fir)
        self.final_conv = _conv(ngf * 8 + 1, ngf * 8, 3, padding=1, init_scale=0.0)
        self.end_linear = _dense(ngf * 8, 1)

    def _minibatch_stddev(self, x: torch.Tensor, group_size: int) -> torch.Tensor:
        """Append one channel: the std over groups of samples, averaged over features and pixels.

        Sample b belongs to group b % (B // group); every sample gets its group's value.
        """
        b, c, h, w = x.shape
        group = min(b, group_size)
        if b % group:
            raise ValueError(f"critic batch {b} is not divisible by the minibatch-stddev group {group}")
        _, var = centred_var(x.reshape(group, -1, 1, c, h, w), 0)
        std = torch.sqrt(var[0] + 1e-8)
        std = std.mean([2, 3, 4], keepdim=True).squeeze(2)
        return torch.cat([x, std.repeat(group, 1, h, w)], dim=1)

    def forward(self, t, x_t: torch.Tensor, structure: torch.Tensor, stddev_group: int | None = None):
        """Scores of shape (B,).

        Args:
            t: python int, 0-d tensor, or (B,) tensor of timesteps.
            x_t: (B, 3, H, W) texture state; structure: (B, 1, H, W). H, W divisible by 8.
            stddev_group: override the minibatch-stddev group; 1 scores every sample on its own
                (what the reference's one-image-at-a-time sampler sees, whatever the batch size).
        """
        if not isinstance(t, torch.Tensor):
            t = torch.tensor([t])
        t = t.to(x_t.device).reshape(-1)
        t_emb = self.act(self.t_embed(t))
        h = self.start_conv(torch.cat([x_t, structure], dim=1))
        for block in (self.conv1, self.conv2, self.conv3, self.conv4):
            h = block(h, t_emb)
        h = self._minibatch_stddev(h, stddev_group or self.stddev_group)
        h = self.act(self.final_conv(h))
        # end_linear as a per-row product and sum: a GEMM's summation order depends on the batch
        # size, this does not (the sampler's batched and one-image scores stay identical)
        feat = h.sum(dim=(2, 3))
        return ((feat * self.end_linear.weight).sum(dim=1) + self.end_linear.bias).view(-1)
