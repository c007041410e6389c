"""The test pairs file, ``pairs.csv``: one row per (test image, mask), read in one place with one dtype contract.

Columns ``image_id``, ``bin`` and ``mask`` are text (an id such as ``0007`` keeps its zeros; a bin such
as ``10-20`` is a label, never a number); further columns keep pandas' types.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from strdiffusion.io.errors import UserError


TEXT = ("image_id", "bin", "mask")


def read_pairs(pairs_csv, needs: tuple[str, ...] = TEXT) -> pd.DataFrame:
    """The pairs CSV with ``image_id``, ``bin`` and ``mask`` as text (``NA`` stays the text ``NA``), or a one-line
    error naming the file: missing, unreadable, or without the columns ``needs``."""
    pairs_csv = Path(pairs_csv)
    if not pairs_csv.is_file():
        raise UserError(f"{pairs_csv}: pairs file not found; run the masks stage first")
    try:
        pairs = pd.read_csv(pairs_csv, dtype=dict.fromkeys(TEXT, str), keep_default_na=False, na_values=[""])
    except (ValueError, OSError) as exc:
        raise UserError(f"{pairs_csv}: cannot read as CSV ({exc})") from None
    missing = [c for c in needs if c not in pairs.columns]
    if missing:
        raise UserError(f"{pairs_csv}: missing column(s) {', '.join(missing)}; expected image_id, bin, mask")
    for column in TEXT:
        if column in pairs.columns:
            pairs[column] = pairs[column].fillna("")
    return pairs
