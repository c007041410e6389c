"""What the mask modules share: the in-memory hole mask, its hole ratio, hole-ratio bins, a bin of masks.

- In memory a mask is ``hole``: uint8 HxW, 1 = HOLE, 0 = known.
- Its hole ratio (:func:`hole_ratio`) is the number of hole pixels divided by the number of pixels,
  an exact fraction in [0, 1] (a count, not a float32 mean: 0.3 must not read 0.30000001). Every
  measurement of a ratio in the mask modules (generating, binning, importing, stats, pairing) goes
  through this one function; a mask FILE is first read as ``read_mask(path) == 0`` (white = hole,
  binarised at 128).
- A hole-ratio bin ``(lo, hi)`` holds masks with ``lo < hole_ratio <= hi`` (:func:`in_bin`); its folder
  is :func:`strdiffusion.settings.values.bin_label` ('10-20').

``masks.py`` (the stage), ``generators.py`` and ``folder.py`` import these at top level.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from strdiffusion.io.errors import UserError


def hole_ratio(hole: np.ndarray) -> float:
    """Fraction of hole pixels (nonzero entries) of an HxW array."""
    return np.count_nonzero(hole) / hole.size


def in_bin(ratio: float, lo: float, hi: float) -> bool:
    """Whether a hole ratio lies in the bin ``(lo, hi]``."""
    return lo < ratio <= hi


def check_size(size) -> int:
    """The mask size in px as an int; a user error unless it is a positive integer."""
    if not isinstance(size, (int, np.integer)) or size <= 0:
        raise UserError(f"mask size must be a positive number of pixels, got {size}; fix config key image_size")
    return int(size)


def check_bins(bins) -> list[tuple[float, float]]:
    """Bins as (lo, hi) float pairs; a user error unless each has 0 <= lo < hi <= 1 and there is one."""
    out = []
    for b in bins:
        lo, hi = float(b[0]), float(b[1])
        if not (0.0 <= lo < hi <= 1.0):
            raise UserError(f"hole-ratio bin {lo}:{hi} must satisfy 0 <= lo < hi <= 1 (config key masks.bins)")
        out.append((lo, hi))
    if not out:
        raise UserError("no hole-ratio bins given; set config key masks.bins (e.g. [[0.1, 0.2]])")
    return out


@dataclass
class MaskBin:
    """The masks of one bin: ``masks`` are 1 = hole uint8 arrays; ``sources`` name where each came from."""
    label: str
    lo: float
    hi: float
    fill: str
    masks: list = field(default_factory=list)
    sources: list = field(default_factory=list)
