"""The mask stage: generate or import hole masks per hole-ratio bin, build a training pool, pair them with test images.

Conventions (``bins.py``):
- In memory a mask is ``hole``: uint8 HxW, 1 = HOLE, 0 = known. Its hole ratio is the exact
  fraction of hole pixels (``bins.hole_ratio``, the one measure used everywhere).
- Mask FILES are 8-bit grayscale PNGs, white (255) = HOLE, black (0) = known.
- A hole-ratio bin ``(lo, hi)`` holds masks with ``lo < hole_ratio <= hi``; its folder is
  :func:`strdiffusion.settings.values.bin_label` ('10-20').

Protocols:
- ``lama_thin``, ``lama_medium``, ``lama_thick``, ``lama_thick_512``, ``deepfill``, ``box_center``,
  ``box_random`` and RePaint's fixed ``repaint_half``, ``repaint_expand``, ``repaint_lines``,
  ``repaint_sr2``: drawn by the generators of ``strdiffusion/masks/generators.py`` (parameters there).
  The fixed masks ignore bins and form one bin named after the mask ('half', 'expand', 'lines',
  'sr2') holding a single file.
- ``folder``: any folder or .zip of mask files, with polarity, threshold, resizing and ratio / index /
  no binning (``strdiffusion/masks/folder.py``).
- ``nvidia``: the NVIDIA irregular mask test set, imported from a folder or .zip of PNGs; a preset of
  ``folder`` (white = hole, index binning by groups of 2,000 in NVIDIA's bins, border halves).

How a bin is filled (``fill``), recorded per bin in ``stats.csv``:
- ``natural``: draw masks from the protocol's own generator and keep those whose hole ratio lies
  in the bin (rejection sampling). This keeps the protocol's distribution conditioned on the bin.
- ``adaptive``: for stroke protocols, start from an empty mask and add one unit of the protocol's
  kind at a time (a LaMa stroke of 1-5 segments or a LaMa box, after picking the kind as LaMa
  does; a DeepFill brush stroke) until the ratio exceeds ``lo``; keep the mask when it is <= ``hi``,
  otherwise discard it and start again. Only the NUMBER of strokes differs from the protocol
  (DeepFill v2's 1-3 strokes never reach 40-50 %, LaMa medium rarely does at 256 px). For box
  protocols the target ratio is drawn uniformly in the bin ('targeted').
- ``auto`` (default): natural, unless the first 200 natural draws show that filling the bin would
  take more than max(20 x count, 200) draws (or that budget runs out); then the bin is filled
  adaptively instead, from its own seed. Box protocols are always 'targeted'.
Each bin has its own random stream seeded by ``seed_for(seed, protocol, bin_label)``, so adding a
bin does not change the others, and the same seed gives byte-identical files.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from strdiffusion.core.seeds import seed_for
from strdiffusion.io.errors import UserError
from strdiffusion.io.files import atomic_dir, save_png_atomic, write_csv_atomic
from strdiffusion.io.images import read_mask
from strdiffusion.masks.bins import MaskBin, check_bins, check_size, hole_ratio, in_bin
from strdiffusion.masks.folder import import_folder, import_pool
from strdiffusion.masks.generators import FIXED, MAX_TAMPER_AREA, PROTOCOLS, Protocol
from strdiffusion.settings.jobs import MaskSettings, PairSettings, PoolSettings
from strdiffusion.settings.masks import NVIDIA_PER_BIN
from strdiffusion.settings.values import bin_label

log = logging.getLogger("strdiffusion.masks.build")

NVIDIA_EDGES = (0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
HIST_BINS = 20                 # histogram of hole ratios in stats: 20 bins of 5 % over [0, 1]
_PROBE_DRAWS = 200             # auto fill: natural draws used to estimate a bin's acceptance rate
_NATURAL_DRAWS_PER_MASK = 20   # auto fill: above this expected cost per mask, fill adaptively

ALL_PROTOCOLS = sorted([*PROTOCOLS, *FIXED, "nvidia", "folder"])


def _check_protocol(protocol: str) -> None:
    if protocol not in ALL_PROTOCOLS:
        raise UserError(f"unknown mask protocol '{protocol}'; choose one of {', '.join(ALL_PROTOCOLS)} "
                        "(config key masks.protocol)")


# ----------------------------------------------------------------------------------------------
# Binned generation


def _fill_natural(proto: Protocol, size: int, rng, lo: float, hi: float, count: int, auto: bool):
    """Rejection sampling; returns the masks, or None when auto decides the bin is too rare."""
    budget = max(_NATURAL_DRAWS_PER_MASK * count, _PROBE_DRAWS) * (1 if auto else 5)
    kept, draws = [], 0
    while len(kept) < count:
        if draws >= budget:
            if auto:
                return None
            raise UserError(f"protocol {proto.name} reaches hole ratio {bin_label(lo, hi)} % at {size} px in only "
                            f"{len(kept)} of {draws} draws; use fill 'adaptive' (--fill adaptive) or another bin")
        hole = proto.natural(size, size, rng)
        draws += 1
        if in_bin(hole_ratio(hole), lo, hi):
            kept.append(hole)
        if auto and draws == _PROBE_DRAWS and len(kept) < count:
            if not kept or count * _PROBE_DRAWS / len(kept) > budget:
                return None
    return kept


def _fill_adaptive(proto: Protocol, size: int, rng, lo: float, hi: float, count: int):
    budget = 50 * count + 200
    kept, tries = [], 0
    reach = lo < proto.max_ratio
    while reach and len(kept) < count and tries < budget:
        hole = proto.adaptive(size, size, rng, lo, hi)
        tries += 1
        if hole is not None and in_bin(hole_ratio(hole), lo, hi):
            kept.append(hole)
        elif tries == 200 and not kept:   # hopeless: no hit in 200 tries
            break
    if len(kept) < count:
        why = (f" (LaMa discards masks with hole ratio above {MAX_TAMPER_AREA}, max_tamper_area)"
               if proto.max_ratio < 1 and lo >= proto.max_ratio else "")
        raise UserError(f"protocol {proto.name} cannot reach hole ratio {lo:g}-{hi:g} at {size} px{why}; "
                        "choose another protocol or bin (config keys masks.protocol, masks.bins)")
    return kept


def generate_binned(protocol: str, size: int, bins, count: int, seed: int, *, fill: str = "auto",
                    nvidia_source=None, nvidia_binning: str = "index", nvidia_border: str = "both",
                    nvidia_per_bin: int = NVIDIA_PER_BIN, folder: dict | None = None) -> list[MaskBin]:
    """``count`` masks per bin ``(lo, hi]`` whose MEASURED hole ratio lies in the bin.

    ``fill`` is 'auto', 'natural' or 'adaptive' (module docstring). Fixed RePaint protocols ignore
    ``bins`` and ``count`` and return one bin named after the mask with its single mask. ``nvidia``
    imports from ``nvidia_source`` (see :func:`import_nvidia`); ``folder`` from ``folder['source']`` with
    the options of :func:`strdiffusion.masks.folder.import_folder` in ``folder``.
    """
    _check_protocol(protocol)
    size = check_size(size)
    if count < 1:
        raise UserError(f"mask count per bin must be >= 1, got {count}; fix config key masks.per_bin")
    if protocol in FIXED:
        name, fn = FIXED[protocol]
        hole = fn(size, size)
        r = hole_ratio(hole)
        return [MaskBin(name, r, r, "fixed", [hole], [protocol])]
    bins = check_bins(bins)
    if protocol == "folder":
        opts = dict(folder or {})
        return import_folder(opts.pop("source", None), size, bins, count, seed, **opts)
    if protocol == "nvidia":
        return import_nvidia(nvidia_source, size, bins, count, seed, binning=nvidia_binning, border=nvidia_border,
                             per_bin=nvidia_per_bin)
    if fill not in ("auto", "natural", "adaptive"):
        raise UserError(f"mask fill must be auto, natural or adaptive, got '{fill}'")
    proto = PROTOCOLS[protocol]
    out = []
    for lo, hi in bins:
        label = bin_label(lo, hi)
        masks, how = None, proto.adaptive_name
        if fill == "natural" or (fill == "auto" and proto.auto_natural):
            rng = np.random.default_rng(seed_for(seed, protocol, label))
            masks = _fill_natural(proto, size, rng, lo, hi, count, auto=fill == "auto")
            how = "natural"
        if masks is None:
            rng = np.random.default_rng(seed_for(seed, protocol, label, "adaptive"))
            masks, how = _fill_adaptive(proto, size, rng, lo, hi, count), proto.adaptive_name
        log.info("%s %s %%: %d masks at %d px (%s)", protocol, label, len(masks), size, how)
        out.append(MaskBin(label, lo, hi, how, masks, [protocol] * len(masks)))
    return out


def generate_pool(protocol: str, size: int, count: int, seed: int, **opts) -> list[np.ndarray]:
    """``count`` training masks (1 = hole) of mixed hole ratios: the protocol's natural distribution
    (box protocols: area U(0.05, 0.5); nvidia: a seeded random choice of the source's files, with
    ``nvidia_source`` and ``nvidia_border`` in ``opts``). Masks without any hole are redrawn."""
    _check_protocol(protocol)
    size = check_size(size)
    if count < 1:
        raise UserError(f"training mask pool size must be >= 1, got {count}; fix config key masks.train_pool")
    if protocol in FIXED:
        return [FIXED[protocol][1](size, size)] * count
    if protocol in ("nvidia", "folder"):
        if protocol == "nvidia":
            return import_pool(opts.get("nvidia_source"), size, count, seed, protocol="nvidia",
                               border=opts.get("nvidia_border", "both"),
                               files_per_bin=opts.get("nvidia_per_bin", NVIDIA_PER_BIN),
                               key="masks.nvidia_source (--nvidia-source)", extensions=(".png",))
        folder = dict(opts.get("folder") or {})
        return import_pool(folder.pop("source", None), size, count, seed, **folder)
    proto = PROTOCOLS[protocol]
    rng = np.random.default_rng(seed_for(seed, protocol, "pool"))
    pool = []
    while len(pool) < count:
        hole = proto.natural(size, size, rng)
        if hole.any():
            pool.append(hole)
    return pool


# ----------------------------------------------------------------------------------------------
# NVIDIA irregular masks

def _nvidia_group(lo: float, hi: float) -> int:
    for k in range(len(NVIDIA_EDGES) - 1):
        if abs(hi - NVIDIA_EDGES[k + 1]) < 1e-9 and (abs(lo - NVIDIA_EDGES[k]) < 1e-9 or (k == 0 and lo == 0)):
            return k
    names = ", ".join(f"{a:g}:{b:g}" for a, b in zip(NVIDIA_EDGES, NVIDIA_EDGES[1:]))
    raise UserError(f"hole-ratio bin {lo:g}:{hi:g} is not an NVIDIA bin ({names}); use those bins or "
                    "set masks.nvidia_binning (--nvidia-binning) to ratio")


def import_nvidia(source, size: int, bins, count: int, seed: int, *, binning: str = "index",
                  border: str = "both", per_bin: int = NVIDIA_PER_BIN) -> list[MaskBin]:
    """Import NVIDIA masks into bins, ``count`` per bin chosen by a permutation seeded by (seed, bin).

    ``binning='index'``: file k (sorted by name) belongs to NVIDIA bin ``k // per_bin``
    ((0.01, 0.1], (0.1, 0.2], ..., (0.5, 0.6]; a bin may also be written 0:0.1); requested bins must
    be NVIDIA bins. ``binning='ratio'``: a file belongs to the requested bin holding its hole ratio
    measured after resizing. ``border`` keeps the masks with ('with') or without ('without') the
    border constraint (by position within each group of ``per_bin``), or 'both'. A bin with fewer
    candidates than ``count`` keeps them all (logged).
    """
    if binning not in ("index", "ratio"):
        raise UserError(f"nvidia_binning must be index or ratio, got '{binning}'")
    if binning == "index":
        for lo, hi in bins:
            _nvidia_group(lo, hi)  # an error naming the NVIDIA bins before any file is read
    return import_folder(source, size, bins, count, seed, polarity="hole_white", binning=binning,
                         files_per_bin=per_bin, protocol="nvidia", group_of=_nvidia_group, border=border,
                         key="masks.nvidia_source (--nvidia-source)", extensions=(".png",))


# ----------------------------------------------------------------------------------------------
# Statistics, writing, pairing

def _hist_columns() -> list[str]:
    step = 100 // HIST_BINS
    return [f"hist_{k * step}-{(k + 1) * step}" for k in range(HIST_BINS)]


def ratio_stats(protocol: str, label: str, lo: float, hi: float, fill: str, ratios) -> dict:
    """One stats row: count, min/mean/max hole ratio and a histogram (bins of 5 %, (lo, hi], 0 in the first)."""
    ratios = np.asarray(ratios, dtype=np.float64)
    # bin index from the exact fraction, so a ratio on an edge is counted as its (lo, hi] bin says
    idx = np.clip(np.ceil(np.round(ratios * HIST_BINS, 9)).astype(int) - 1, 0, HIST_BINS - 1)
    hist = np.bincount(idx, minlength=HIST_BINS)
    row = dict(protocol=protocol, bin=label, lo=lo, hi=hi, fill=fill, count=len(ratios),
               hole_min=ratios.min(), hole_mean=ratios.mean(), hole_max=ratios.max())
    row.update(zip(_hist_columns(), (int(v) for v in hist)))
    return row


def stats(protocol: str, mask_bins: list[MaskBin]):
    """The ``stats.csv`` table: one row per bin (see :func:`ratio_stats`)."""
    import pandas as pd

    rows = [ratio_stats(protocol, b.label, b.lo, b.hi, b.fill, [hole_ratio(m) for m in b.masks]) for b in mask_bins]
    return pd.DataFrame(rows)


def _write_dir(out: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` into a fresh temporary folder that then replaces ``out`` whole."""
    with atomic_dir(out) as tmp:
        write(tmp)


def _png(hole: np.ndarray) -> np.ndarray:
    return (np.asarray(hole) != 0).astype(np.uint8) * 255


def write_binned(out, protocol: str, mask_bins: list[MaskBin]) -> None:
    """Write ``out/<bin>/<k:04d>.png`` (white = hole), ``out/stats.csv`` and ``out/masks.csv``."""
    import pandas as pd

    def write(tmp: Path):
        rows = []
        for b in mask_bins:
            for k, (hole, src) in enumerate(zip(b.masks, b.sources)):
                rel = f"{b.label}/{k:04d}.png"
                save_png_atomic(tmp / rel, _png(hole))
                rows.append(dict(bin=b.label, file=rel, hole_ratio=hole_ratio(hole), source=src))
        write_csv_atomic(stats(protocol, mask_bins), tmp / "stats.csv")
        write_csv_atomic(pd.DataFrame(rows, columns=["bin", "file", "hole_ratio", "source"]), tmp / "masks.csv")

    _write_dir(out, write)


def write_pool(out, protocol: str, pool: list[np.ndarray]) -> None:
    """Write ``out/<k:05d>.png`` (white = hole) and ``out/stats.csv`` (one row, bin 'pool')."""
    import pandas as pd

    def write(tmp: Path):
        for k, hole in enumerate(pool):
            save_png_atomic(tmp / f"{k:05d}.png", _png(hole))
        row = ratio_stats(protocol, "pool", 0.0, 1.0, "natural", [hole_ratio(m) for m in pool])
        write_csv_atomic(pd.DataFrame([row]), tmp / "stats.csv")

    _write_dir(out, write)


def _bin_labels(bins, masks_dir: Path) -> list[str]:
    if bins is None:
        labels = sorted(p.name for p in masks_dir.iterdir() if p.is_dir() and any(p.glob("*.png"))) \
            if masks_dir.is_dir() else []
        if not labels:
            raise UserError(f"{masks_dir}: no mask bins (sub-folders of PNGs); run `strdiffusion masks generate` first")
        return labels
    return [b if isinstance(b, str) else bin_label(*check_bins([b])[0]) for b in bins]


def _file_hole_ratio(path) -> float:
    """Hole ratio of a mask file (white = hole, binarised at 128): :func:`hole_ratio` of its holes."""
    return hole_ratio(read_mask(path) == 0)


def make_pairs(test_ids, bins, masks_dir, n_test: int, seed: int):
    """Pair the first ``n_test`` test ids (sorted) with masks, per bin.

    Image i of bin b gets mask ``files_b[perm_b[i % len(files_b)]]``, where ``files_b`` are the PNGs
    of ``masks_dir/<label>`` sorted by name and ``perm_b`` is a permutation seeded by (seed, label).
    ``bins`` are (lo, hi) pairs, labels ('10-20', 'half') or None (every sub-folder of masks_dir).
    Returns a DataFrame ``image_id, bin, mask, hole_ratio``; ``mask`` is ``masks_dir/<label>/<file>``
    exactly as ``masks_dir`` was given (relative paths stay relative to the working directory).
    """
    import pandas as pd

    masks_dir = Path(masks_dir)
    ids = sorted({str(i) for i in test_ids})
    if n_test < 1:
        raise UserError(f"n_test must be >= 1, got {n_test}; fix config key n_test")
    if len(ids) < n_test:
        raise UserError(f"only {len(ids)} test images but n_test = {n_test}; lower config key n_test "
                        "or add test images")
    ids = ids[:n_test]
    rows, ratios = [], {}
    for label in _bin_labels(bins, masks_dir):
        files = sorted((masks_dir / label).glob("*.png"))
        if not files:
            raise UserError(f"{masks_dir / label}: no mask PNGs for bin {label}; run `strdiffusion masks generate` "
                            "with this bin first")
        if len(files) < n_test:
            log.warning("bin %s: %d masks for n_test = %d test images; images will share masks",
                        label, len(files), n_test)
        perm = np.random.default_rng(seed_for(seed, "pairs", label)).permutation(len(files))
        for i, image_id in enumerate(ids):
            f = files[perm[i % len(files)]]
            if f not in ratios:
                ratios[f] = _file_hole_ratio(f)
            rows.append(dict(image_id=image_id, bin=label, mask=str(f), hole_ratio=ratios[f]))
    return pd.DataFrame(rows, columns=["image_id", "bin", "mask", "hole_ratio"])


def measure(masks_dir, protocol: str = ""):
    """Stats of existing mask folders: one row per sub-folder of PNGs, or 'pool' for PNGs directly inside."""
    import pandas as pd

    masks_dir = Path(masks_dir)
    groups = {p.name: sorted(p.glob("*.png")) for p in sorted(masks_dir.iterdir()) if p.is_dir()} \
        if masks_dir.is_dir() else {}
    groups = {k: v for k, v in groups.items() if v}
    top = sorted(masks_dir.glob("*.png")) if masks_dir.is_dir() else []
    if top:
        groups["pool"] = top
    if not groups:
        raise UserError(f"{masks_dir}: no mask PNGs found; give a folder of masks (white = hole)")
    rows = [ratio_stats(protocol, label, float("nan"), float("nan"), "measured",
                        [_file_hole_ratio(f) for f in files]) for label, files in groups.items()]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# Command line

def _folder_opts(s: MaskSettings | PoolSettings) -> dict:
    """The options of protocol folder (:func:`strdiffusion.masks.folder.import_folder`, ``import_pool``)."""
    opts = dict(source=s.source, polarity=s.polarity, threshold=s.threshold, resize=s.resize)
    if isinstance(s, MaskSettings):
        opts.update(binning=s.binning, files_per_bin=s.files_per_bin, n_test=s.n_test)
    return opts


def run_generate(s: MaskSettings, out: Path) -> None:
    """``masks generate``: the masks of each of ``s``'s bins written to ``out`` with their stats."""
    if s.protocol not in FIXED and s.protocol in ALL_PROTOCOLS and not s.bins:
        raise UserError(f"protocol {s.protocol} needs --bins (config key masks.bins), e.g. 0.1:0.2,0.2:0.3")
    mask_bins = generate_binned(s.protocol, s.size, list(s.bins), s.count, s.seed, fill=s.fill,
                                nvidia_source=s.nvidia_source, nvidia_binning=s.nvidia_binning,
                                nvidia_border=s.nvidia_border, nvidia_per_bin=s.nvidia_per_bin,
                                folder=_folder_opts(s))
    write_binned(out, s.protocol, mask_bins)


def run_pool(s: PoolSettings, out: Path) -> None:
    """``masks pool``: a training pool of mixed hole ratios written to ``out``."""
    pool = generate_pool(s.protocol, s.size, s.count, s.seed, nvidia_source=s.nvidia_source,
                         nvidia_border=s.nvidia_border, nvidia_per_bin=s.nvidia_per_bin, folder=_folder_opts(s))
    write_pool(out, s.protocol, pool)
    log.info("%s pool: %d masks at %d px -> %s", s.protocol, len(pool), s.size, out)


def run_pairs(s: PairSettings, manifest_csv, masks, out) -> None:
    """``masks pairs``: the manifest's test images paired with the masks of each bin, written to ``out``."""
    import pandas as pd

    try:
        manifest = pd.read_csv(manifest_csv, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{manifest_csv}: cannot read the manifest CSV ({exc.__class__.__name__}); "
                        "run `strdiffusion data` first") from None
    missing = {"id", "split"} - set(manifest.columns)
    if missing:
        raise UserError(f"{manifest_csv}: manifest lacks column(s) {', '.join(sorted(missing))}; "
                        "it must be written by `strdiffusion data`")
    test = manifest[manifest["split"] == "test"]
    if "status" in test.columns:
        test = test[test["status"].isin(["ok", ""])]
    pairs = make_pairs(test["id"].tolist(), list(s.bins) or None, Path(masks), s.n_test, s.seed)
    write_csv_atomic(pairs, out)
    log.info("%d pairs (%d bins x %d images) -> %s", len(pairs), pairs["bin"].nunique(), s.n_test, out)
