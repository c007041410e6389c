"""The conditional noise-prediction UNet of IR-SDE, shared by the structure and texture denoisers.

Module names follow the reference (htyjers/StrDiffusion, ``DenoisingUNet_arch.py``) so that its
released state dicts load strictly; see ``tests/fixtures/parity/*_state_dict.txt``.

Layout, for ``depth`` levels with ``dims[i] = nf * ch_mult[i]`` and a middle of ``2 * nf * ch_mult[-1]``:
- input ``cat([x_t - mu, mu])`` (2 * in_nc channels), reflect-padded on the bottom/right to a
  multiple of ``2 ** depth`` and cropped back at the end;
- ``init_conv``: 7x7 conv to nf; sinusoidal time embedding (nf) -> MLP -> 4 * nf;
- ``downs[i]`` = [ResBlock, ResBlock, pre-normed linear attention, 4x4 stride-2 conv (a 3x3 conv
  at the last level), SPADEBlock (texture net only)];
- middle: ResBlock, attention, ResBlock;
- ``ups[i]``: mirror image with skip concatenation, nearest x2 + 3x3 conv (a 3x3 conv at the top);
- ``final_res_block`` on ``cat([x, init_conv output])`` and a 3x3 ``final_conv`` to out_nc.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import Conv2d, centred_var, matmul
from .spade import SPADEBlock


def _conv(dim_in: int, dim_out: int, kernel_size: int = 3, bias: bool = False) -> Conv2d:
    """'Same' conv without bias (the reference's ``default_conv``)."""
    return Conv2d(dim_in, dim_out, kernel_size, padding=kernel_size // 2, bias=bias)


class SinusoidalPosEmb(nn.Module):
    """Transformer-style embedding of a (B,) timestep tensor: cat(sin, cos), ``dim`` features."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        scale = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=t.device) * -scale)
        args = t[:, None] * freqs[None, :]
        return torch.cat((args.sin(), args.cos()), dim=-1)


class Block(nn.Module):
    """conv -> optional time scale/shift -> SiLU."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = _conv(dim_in, dim_out)
        self.act = nn.SiLU()

    def forward(self, x, scale_shift=None):
        x = self.proj(x)
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.act(x)


class ResBlock(nn.Module):
    """Two conv blocks, the first modulated by the time embedding; 1x1 conv shortcut if widths differ."""

    def __init__(self, dim_in: int, dim_out: int, time_emb_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim_out * 2))
        self.block1 = Block(dim_in, dim_out)
        self.block2 = Block(dim_out, dim_out)
        self.res_conv = _conv(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x, time_emb):
        scale_shift = self.mlp(time_emb)[:, :, None, None].chunk(2, dim=1)
        h = self.block1(x, scale_shift=scale_shift)
        h = self.block2(h)
        return h + self.res_conv(x)


class LayerNorm(nn.Module):
    """Per-pixel normalisation over channels (biased variance), with a learned per-channel gain ``g``."""

    def __init__(self, dim: int):
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x):
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        centred, var = centred_var(x, 1)
        return centred * (var + eps).rsqrt() * self.g


class LinearAttention(nn.Module):
    """Linear attention (Shen et al.): softmax over features for q, over positions for k.

    Cost is linear in the number of pixels; this is not softmax attention, so it is not
    ``scaled_dot_product_attention``.
    """

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        hidden = dim_head * heads
        self.to_qkv = Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(Conv2d(hidden, dim, 1), LayerNorm(dim))

    def forward(self, x):
        b, _, h, w = x.shape
        q, k, v = (part.reshape(b, self.heads, -1, h * w) for part in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        v = v / (h * w)
        context = matmul(k, v.transpose(-1, -2))      # (b, heads, d, e)
        out = matmul(context.transpose(-1, -2), q)    # (b, heads, e, n)
        return self.to_out(out.reshape(b, -1, h, w))


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = LayerNorm(dim)

    def forward(self, x):
        return self.fn(self.norm(x))


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


def _attention(dim: int, heads: int, dim_head: int) -> nn.Module:
    return Residual(PreNorm(dim, LinearAttention(dim, heads, dim_head)))


def _upsample(dim_in: int, dim_out: int) -> nn.Module:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), Conv2d(dim_in, dim_out, 3, padding=1))


def default_ch_mult(depth: int) -> tuple[int, ...]:
    """The reference's channel multipliers: 1, 2, 4, ... (1, 2, 4, 8 for depth 4)."""
    return tuple(2**i for i in range(depth))


class ConditionalUNet(nn.Module):
    """Noise predictor eps_hat(x_t, mu, t[, S]) of the mean-reverting SDE.

    Args:
        in_nc, out_nc: image channels (1 for the structure net, 3 for texture / IR-SDE).
        nf: base width. depth: number of resolution levels (the image is downsampled
            ``2 ** (depth - 1)`` times, but padded to a multiple of ``2 ** depth`` like the reference).
        ch_mult: width multiplier of each level's input, length ``depth``; default 1, 2, 4, ...
            Level i maps nf*ch_mult[i] to nf*ch_mult[i+1]; the last level and the middle have
            2 * nf * ch_mult[-1] channels.
        guidance: add a SPADE block after each downsampling (the texture net). The forward then
            needs ``guidance``, a (B, guidance_nc, H, W) structure map.
        spade_hidden: hidden channels of the SPADE MLPs. attn_heads, attn_dim_head: linear attention.
    """

    def __init__(self, in_nc: int, out_nc: int, nf: int = 64, depth: int = 4,
                 ch_mult: Sequence[int] | None = None, guidance: bool = False, guidance_nc: int = 1,
                 spade_hidden: int = 16, attn_heads: int = 4, attn_dim_head: int = 32):
        super().__init__()
        ch_mult = tuple(ch_mult) if ch_mult is not None else default_ch_mult(depth)
        if len(ch_mult) != depth:
            raise ValueError(f"ch_mult needs one multiplier per level ({depth}), got {ch_mult}")
        self.depth = depth
        self.guidance = guidance
        self.guidance_nc = guidance_nc
        dims = [nf * m for m in ch_mult] + [2 * nf * ch_mult[-1]]
        time_dim = nf * 4
        heads = (attn_heads, attn_dim_head)

        self.init_conv = _conv(in_nc * 2, nf, 7)
        self.time_mlp = nn.Sequential(
            SinusoidalPosEmb(nf), nn.Linear(nf, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim))

        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        for i in range(depth):
            dim_in, dim_out = dims[i], dims[i + 1]
            last = i == depth - 1
            level = [
                ResBlock(dim_in, dim_in, time_dim),
                ResBlock(dim_in, dim_in, time_dim),
                _attention(dim_in, *heads),
                _conv(dim_in, dim_out) if last else Conv2d(dim_in, dim_out, 4, 2, 1),
            ]
            if guidance:
                level.append(SPADEBlock(dim_out, guidance_nc, spade_hidden))
            self.downs.append(nn.ModuleList(level))
            self.ups.insert(0, nn.ModuleList([
                ResBlock(dim_out + dim_in, dim_out, time_dim),
                ResBlock(dim_out + dim_in, dim_out, time_dim),
                _attention(dim_out, *heads),
                _conv(dim_out, dim_in) if i == 0 else _upsample(dim_out, dim_in),
            ]))

        mid = dims[-1]
        self.mid_block1 = ResBlock(mid, mid, time_dim)
        self.mid_attn = _attention(mid, *heads)
        self.mid_block2 = ResBlock(mid, mid, time_dim)

        self.final_res_block = ResBlock(dims[0] + nf, nf, time_dim)
        self.final_conv = Conv2d(nf, out_nc, 3, 1, 1)

    @property
    def pad_multiple(self) -> int:
        return 2**self.depth

    def _time(self, time, x: torch.Tensor) -> torch.Tensor:
        """A python number becomes a (1,) tensor that broadcasts over the batch."""
        if isinstance(time, torch.Tensor):
            return time.to(x.device).reshape(-1)
        return torch.tensor([time], device=x.device)

    def forward(self, xt: torch.Tensor, cond: torch.Tensor, time, guidance: torch.Tensor | None = None):
        """Predict the noise in ``xt``.

        Args:
            xt: (B, in_nc, H, W) state. cond: (B, in_nc, H, W) the SDE mean mu (degraded image).
            time: python int, 0-d tensor, or per-sample tensor of B timesteps.
            guidance: (B, guidance_nc, H, W) structure map; required iff the net was built with guidance.
        Returns:
            (B, out_nc, H, W) eps_hat.
        """
        if self.guidance and guidance is None:
            raise ValueError("this UNet was built with guidance=True: pass the structure map as `guidance`")
        if not self.guidance and guidance is not None:
            raise ValueError("this UNet was built without guidance; do not pass a guidance map")
        H, W = xt.shape[-2:]
        x = torch.cat([xt - cond, cond], dim=1)
        s = self.pad_multiple
        pad_h, pad_w = (s - H % s) % s, (s - W % s) % s
        if pad_h or pad_w:
            if pad_h >= H or pad_w >= W:
                raise ValueError(f"input {H}x{W} is too small to reflect-pad to a multiple of {s}; "
                                 f"pad it to a multiple of {s} first")
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")

        x = self.init_conv(x)
        x_init = x
        t = self.time_mlp(self._time(time, xt))

        skips = []
        for level in self.downs:
            block1, block2, attn, downsample = level[:4]
            x = block1(x, t)
            skips.append(x)
            x = attn(block2(x, t))
            skips.append(x)
            x = downsample(x)
            if self.guidance:
                x = level[4](x, guidance)

        x = self.mid_block2(self.mid_attn(self.mid_block1(x, t)), t)

        for block1, block2, attn, upsample in self.ups:
            x = block1(torch.cat([x, skips.pop()], dim=1), t)
            x = block2(torch.cat([x, skips.pop()], dim=1), t)
            x = upsample(attn(x))

        x = self.final_res_block(torch.cat([x, x_init], dim=1), t)
        x = self.final_conv(x)
        return x[..., :H, :W]
