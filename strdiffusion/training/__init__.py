"""Training: the trainer of the four networks, its seeded data, its saved state and its learning curve.

May import core, io, settings, runtime, data, masks, models and metrics."""
