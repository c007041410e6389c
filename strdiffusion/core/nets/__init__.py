"""Networks: the conditional UNet (structure / texture / IR-SDE denoisers) and the critic."""
from .critic import Critic
from .spade import bake_spectral_norm
from .unet import ConditionalUNet, default_ch_mult

__all__ = ["ConditionalUNet", "Critic", "bake_spectral_norm", "default_ch_mult"]
