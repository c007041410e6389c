"""Values of the settings that have a text form: hole-ratio bins (``0.1:0.2`` on the command line, ``10-20``
as a label), given checkpoints (``NET=PATH``), a run's outside rows (JSON). The rendering and parsing of each such value lives here, once: a value is built from its text (the
command line) or from its config form, keeps its type through the library, and ``str`` gives its text back.
"""
from __future__ import annotations

import dataclasses
import json

from strdiffusion.io.errors import UserError


class TextValue:
    """A settings value with a text form: the class builds it from its text (and from its config form), ``str``
    gives the text back; the command line and stored records carry that text."""


def bin_label(lo: float, hi: float) -> str:
    """Hole-ratio bin label, e.g. (0.1, 0.2) -> '10-20'."""
    return f"{round(lo * 100)}-{round(hi * 100)}"


class HoleBin(TextValue, tuple):
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


class GivenCheckpoint(TextValue, tuple):
    """A given checkpoint ``(net, path)`` of a network a row samples: from its text ``NET=PATH`` or a pair."""

    def __new__(cls, value):
        if isinstance(value, str):
            net, sep, path = value.partition("=")
            if not sep or not net or not path:
                raise UserError(f"given checkpoint '{value}' is not of the form NET=PATH (e.g. texture=texture.pt)")
        else:
            net, path = value
        return super().__new__(cls, (str(net), str(path)))

    def __str__(self) -> str:
        return f"{self[0]}={self[1]}"


OUTSIDE_DEFAULTS = {"as_is": False, "resize": "none", "allow_partial": False}


@dataclasses.dataclass(frozen=True)
class OutsideMethod:
    """An outside row's display name and scoring protocol (config ``external_methods.<method>``): scored as
    delivered or with the known pixels copied in (``as_is``), resized to the test size or not (``resize``),
    on the images it has (``allow_partial``)."""

    name: str
    as_is: bool = OUTSIDE_DEFAULTS["as_is"]
    resize: str = OUTSIDE_DEFAULTS["resize"]
    allow_partial: bool = OUTSIDE_DEFAULTS["allow_partial"]


class OutsideRows(TextValue, tuple):
    """A run's outside rows, ``(method, OutsideMethod)`` pairs in method order: from their text (JSON of each
    row's display name and protocol; empty: none) or a mapping such as the config's ``external_methods``;
    ``str`` gives the JSON back (sorted keys), empty when there are none."""

    def __new__(cls, value=()):
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except ValueError:
                raise UserError(f"outside rows {value[:60]!r}: not JSON of the outside rows") from None
        rows = dict(value) if not isinstance(value, dict) else value
        keep = ("name", *OUTSIDE_DEFAULTS)
        pairs = tuple((m, e if isinstance(e, OutsideMethod) else
                       OutsideMethod(**{"name": m, **{k: e[k] for k in keep if k in e}}))
                      for m, e in sorted(rows.items()))
        return super().__new__(cls, pairs)

    def by_method(self) -> dict[str, OutsideMethod]:
        return dict(self)

    def __str__(self) -> str:
        return json.dumps({m: dataclasses.asdict(e) for m, e in self}, sort_keys=True) if self else ""
