"""SPADE structure guidance for the texture denoiser (Park et al. 2019, as used by StrDiffusion).

A :class:`SPADEBlock` follows each downsampling conv of the texture UNet. It modulates the features
with a per-pixel scale and shift predicted from the 1-channel structure map S (the guidance), which
is nearest-resized to the feature size.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.spectral_norm import SpectralNorm

from .layers import Conv2d, centred_var


def positional_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Normalise each pixel over the channel axis (unbiased variance, as the reference)."""
    centred, var = centred_var(x, 1, unbiased=True)
    return centred / var.add(eps).sqrt()


class SPADE(nn.Module):
    """Parameter-free positional norm, then ``x * (1 + gamma(S)) + beta(S)``.

    ``segmap`` must already have x's spatial size (see :meth:`SPADEBlock.forward`).
    """

    def __init__(self, norm_nc: int, label_nc: int = 1, hidden: int = 16, kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.mlp_shared = nn.Sequential(Conv2d(label_nc, hidden, kernel_size, padding=pad), nn.ReLU())
        self.mlp_gamma = Conv2d(hidden, norm_nc, kernel_size, padding=pad)
        self.mlp_beta = Conv2d(hidden, norm_nc, kernel_size, padding=pad)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        actv = self.mlp_shared(segmap)
        return positional_norm(x) * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEBlock(nn.Module):
    """Residual block ``x + conv_1(lrelu(norm_1(conv_0(lrelu(norm_0(x, S))), S)))``.

    ``conv_0`` and ``conv_1`` are spectral-normalised (``torch.nn.utils.spectral_norm``: state-dict
    entries ``weight_orig``, ``weight_u``, ``weight_v``; one power iteration per forward in train
    mode, the stored u and v in eval mode).
    """

    def __init__(self, channels: int, label_nc: int = 1, hidden: int = 16, spectral: bool = True):
        super().__init__()
        sn = nn.utils.spectral_norm if spectral else (lambda m: m)
        self.conv_0 = sn(Conv2d(channels, channels, 3, padding=1))
        self.conv_1 = sn(Conv2d(channels, channels, 3, padding=1))
        self.norm_0 = SPADE(channels, label_nc, hidden)
        self.norm_1 = SPADE(channels, label_nc, hidden)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        # The reference's BaseNetwork.init_weights('normal', 0.02) on every conv, zero biases.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                weight = m.weight_orig if hasattr(m, "weight_orig") else m.weight
                weight.normal_(0.0, std)
                if m.bias is not None:
                    m.bias.zero_()

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        seg = guidance
        if seg.shape[2:] != x.shape[2:]:
            seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return x + dx


def bake_spectral_norm(net: nn.Module) -> nn.Module:
    """Replace every spectral-normalised weight by its current value ``weight_orig / sigma(u, v)``, in place.

    For inference only: the result computes exactly what the eval-mode net computes, without the
    per-forward normalisation hook, but its state dict has plain ``weight`` keys and does not
    match the reference's (save checkpoints before baking).
    """
    for module in net.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, SpectralNorm):
                nn.utils.remove_spectral_norm(module, hook.name)
    return net
