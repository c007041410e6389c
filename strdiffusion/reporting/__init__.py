"""Reporting: paper-style tables, figures, learning curves, the results explorer, the cost plan and the
documentation's generated blocks.

May import core, io, settings, runtime, data, masks, models, metrics, training and inpainting."""
