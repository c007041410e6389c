"""Inpainting: classical fills, the diffusion runner, windows around the holes of own photos, and outside
methods' imported outputs. May import core, io, settings, runtime, models."""
