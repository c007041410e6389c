"""StrDiffusion: structure-guided diffusion inpainting (Liu et al., CVPR 2024), reproducible."""

__version__ = "0.1.0"
