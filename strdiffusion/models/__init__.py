"""Trained networks on disk: checkpoints (ours and the authors'), shrinking for shipping, and re-making a
checkpoint from the provenance it records.

May import core, io, settings and runtime."""
