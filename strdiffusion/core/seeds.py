"""Stable seeds: the model core's per-image noise and the pipeline's draws (masks, splits) use the same rule."""
from __future__ import annotations

import hashlib


def seed_for(*parts) -> int:
    """A stable 63-bit seed derived from any printable parts (global seed, image id, ...).

    Independent of PYTHONHASHSEED, so per-image noise does not depend on the process.
    """
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
