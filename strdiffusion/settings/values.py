"""Values of the settings that have a text form: hole-ratio bins (``0.1:0.2`` on the command line, ``10-20``
as a label). The rendering and parsing of each such value lives here, once.
"""
from __future__ import annotations

from strdiffusion.io.errors import UserError


def bin_label(lo: float, hi: float) -> str:
    """Hole-ratio bin label, e.g. (0.1, 0.2) -> '10-20'."""
    return f"{round(lo * 100)}-{round(hi * 100)}"


def parse_bins(text: str) -> list[tuple[float, float]]:
    """Parse '0.1:0.2,0.2:0.3' into [(0.1, 0.2), (0.2, 0.3)], checking 0 <= lo < hi <= 1."""
    bins = []
    for part in text.split(","):
        try:
            lo, hi = (float(v) for v in part.split(":"))
        except ValueError:
            raise UserError(f"hole-ratio bin '{part}' is not of the form lo:hi (e.g. 0.1:0.2)") from None
        if not (0.0 <= lo < hi <= 1.0):
            raise UserError(f"hole-ratio bin {lo}:{hi} must satisfy 0 <= lo < hi <= 1")
        bins.append((lo, hi))
    return bins
