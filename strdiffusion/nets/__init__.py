"""Networks: the conditional UNet (structure / texture / IR-SDE denoisers) and the critic."""
from .critic import Critic
from .unet import ConditionalUNet, default_ch_mult

__all__ = ["ConditionalUNet", "Critic", "default_ch_mult"]
