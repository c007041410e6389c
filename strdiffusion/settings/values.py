"""Values of the settings that have a text form: hole-ratio bins (``0.1:0.2`` on the command line, ``10-20``
as a label). The rendering and parsing of each such value lives here, once: a value is built from its text (the
command line) or from its config form, keeps its type through the library, and ``str`` gives its text back.
"""
from __future__ import annotations

from strdiffusion.io.errors import UserError


def bin_label(lo: float, hi: float) -> str:
    """Hole-ratio bin label, e.g. (0.1, 0.2) -> '10-20'."""
    return f"{round(lo * 100)}-{round(hi * 100)}"


class HoleBin(tuple):
    """A hole-ratio bin ``(lo, hi)`` with 0 <= lo < hi <= 1: from its text ``lo:hi`` or a pair of numbers (the
    config's ``[lo, hi]``, kept as given); ``str`` gives ``lo:hi`` back."""

    def __new__(cls, value):
        if isinstance(value, str):
            try:
                lo, hi = (float(v) for v in value.split(":"))
            except ValueError:
                raise UserError(f"hole-ratio bin '{value}' is not of the form lo:hi (e.g. 0.1:0.2)") from None
        else:
            lo, hi = value
        if not (0.0 <= lo < hi <= 1.0):
            raise UserError(f"hole-ratio bin {lo}:{hi} must satisfy 0 <= lo < hi <= 1")
        return super().__new__(cls, (lo, hi))

    def __str__(self) -> str:
        return f"{self[0]}:{self[1]}"

    @property
    def label(self) -> str:
        return bin_label(*self)


class BinRef:
    """A bin named as a hole-ratio range (``lo:hi`` or ``[lo, hi]``: a :class:`HoleBin`) or by its label (text,
    e.g. ``half``, the bin of a fixed mask)."""

    def __new__(cls, value):
        if isinstance(value, str) and ":" not in value:
            return value.strip()
        return HoleBin(value)
