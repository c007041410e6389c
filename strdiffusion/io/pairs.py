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


def run_root(pairs_csv, root=None, probe: str | None = None) -> Path:
    """The folder the relative mask paths of ``pairs_csv`` are read from: ``root`` when given, else the folder that
    holds the run's ``results/`` above ``pairs_csv`` (the workflow writes them relative to it; of several folders
    named ``results`` above it, the nearest under which the relative mask path ``probe`` exists), else the current
    folder."""
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"--root {root}: folder not found; give the folder that holds the run's results/")
        return root
    holders = [p.parent for p in Path(pairs_csv).resolve().parents if p.name == "results"]
    holder = next((h for h in holders if probe is not None and (h / probe).exists()), holders[0] if holders else None)
    if holder is None or holder == Path.cwd().resolve():
        return Path(".")
    return holder


def read_pairs_with_masks(pairs_csv, root=None) -> pd.DataFrame:
    """:func:`read_pairs` and ``mask_file``: each mask's path, relative ones read from :func:`run_root`. A missing
    mask file is a one-line error naming it."""
    pairs = read_pairs(pairs_csv)
    relative = [m for m in pairs["mask"].unique() if not Path(m).is_absolute()]
    base = run_root(pairs_csv, root, relative[0] if relative else None)
    files = {m: Path(m) if Path(m).is_absolute() else base / m for m in pairs["mask"].unique()}
    absent = [f for f in files.values() if not f.is_file()]
    if absent:
        where = f"--root {root}" if root is not None else f"{base.resolve()}, the folder that holds the run's results/"
        raise UserError(f"{absent[0]}: mask not found ({len(absent)} of the {len(files)} masks that {pairs_csv} names "
                        f"are missing; its relative paths are read from {where}); pass --root with the folder the "
                        "run's pairs were made in, or rerun the masks stage")
    pairs["mask_file"] = [str(files[m]) for m in pairs["mask"]]
    return pairs
