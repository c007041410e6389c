"""Inpainting: classical fills and the diffusion methods over a shard of test pairs or the user's own
photos (in a window around each hole), and the import of outside methods' outputs.

May import core, io, settings, runtime, data, masks, models and metrics."""
