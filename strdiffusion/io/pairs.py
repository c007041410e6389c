"""The test pairs file, ``pairs.csv``: one row per (test image, mask), read in one place with one dtype contract.

Columns ``image_id``, ``bin`` and ``mask`` are text (an id such as ``0007`` keeps its zeros; a bin such
as ``10-20`` is a label, never a number); further columns keep pandas' types.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from strdiffusion.io.errors import UserError


def read_pairs(pairs_csv) -> pd.DataFrame:
    """The pairs CSV (image_id, bin, mask, ...) with ids and bins as text."""
    pairs_csv = Path(pairs_csv)
    if not pairs_csv.is_file():
        raise UserError(f"{pairs_csv}: pairs file not found; run the masks stage first")
    pairs = pd.read_csv(pairs_csv, dtype={"image_id": str, "bin": str, "mask": str})
    missing = [c for c in ("image_id", "bin", "mask") if c not in pairs.columns]
    if missing:
        raise UserError(f"{pairs_csv}: missing column(s) {', '.join(missing)}; expected image_id, bin, mask")
    return pairs
