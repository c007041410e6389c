"""Import a folder (or .zip) of mask files as a binned test-mask set or a training pool.

The generic protocol ``folder`` (config ``masks.protocol: folder``, ``masks.source``), of which
``nvidia`` is a preset (hole_white, index binning by groups of 2,000 in NVIDIA's bins, border halves):

- files: every PNG / JPEG / BMP / TIFF / WebP under the folder (recursively) or in the .zip, sorted
  by path (index binning relies on this order);
- ``polarity``: ``hole_white`` (white = hole: NVIDIA, LaMa outputs) or ``known_white`` (white =
  known: RePaint's and IR-SDE's fixed masks). A pixel is white when its grey value (PIL 'L') is
  >= ``threshold`` (default 128), so anti-aliased or JPEG-compressed masks binarise predictably;
- ``resize``: every mask is binarised, then resized to image_size x image_size with NEAREST. A mask
  that is not square is an error (its shape would be distorted) unless ``resize: center_crop``,
  which first keeps its centred square;
- ``binning``: ``ratio`` puts a file in the requested bin ``(lo, hi]`` holding its hole ratio
  measured AFTER resizing; ``index`` puts file k in group ``k // files_per_bin`` (group g = the g-th
  requested bin, or for nvidia the g-th NVIDIA bin); ``none`` puts every file in the single
  requested bin, whatever its ratio (the stats still record the true ratios).

``count`` masks per bin are chosen by a permutation seeded by (seed, protocol, bin). A bin with fewer
candidates keeps them all, with a warning; a bin with fewer masks than ``n_test`` warns that test
images will share masks. In memory a mask is ``hole``: uint8, 1 = HOLE (``bins.py``).
"""
from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import numpy as np

from strdiffusion.core.seeds import seed_for
from strdiffusion.io.errors import UserError
from strdiffusion.io.images import IMAGE_EXTENSIONS
from strdiffusion.masks.bins import MaskBin, check_bins, check_size, hole_ratio, in_bin
from strdiffusion.settings.masks import BINNINGS, POLARITIES, RESIZES
from strdiffusion.settings.values import bin_label

log = logging.getLogger("strdiffusion.masks.build")

def _check_choice(value, allowed, key: str) -> str:
    if value not in allowed:
        raise UserError(f"config key '{key}': '{value}' is not one of {', '.join(allowed)}")
    return value

def to_hole(gray: np.ndarray, polarity: str = "hole_white", threshold: int = 128) -> np.ndarray:
    """uint8 grey HxW -> hole (uint8, 1 = hole): white is ``gray >= threshold``."""
    white = np.asarray(gray) >= threshold
    return (white if polarity == "hole_white" else ~white).astype(np.uint8)

def fit(hole: np.ndarray, size: int, resize: str = "nearest", where: str = "mask") -> np.ndarray:
    """Resize a 1 = hole mask to ``size`` x ``size`` with NEAREST (centre square first for center_crop)."""
    from PIL import Image

    h, w = hole.shape
    if h != w:
        if resize != "center_crop":
            raise UserError(f"{where}: mask is {w}x{h}, not square like the {size}x{size} images; "
                            "set masks.resize: center_crop to use its centred square, or crop the masks")
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        hole = hole[top:top + side, left:left + side]
    if hole.shape != (size, size):
        hole = np.asarray(Image.fromarray(hole * np.uint8(255)).resize((size, size), Image.NEAREST)) >= 128
    return np.ascontiguousarray(hole, dtype=np.uint8)

class MaskSource:
    """The mask files of a folder (recursively) or a .zip, sorted by path."""

    def __init__(self, source, key: str = "masks.source", what: str = "mask folder",
                 extensions=IMAGE_EXTENSIONS):
        if not source:
            raise UserError(f"the {what} is not set: set config key {key} to a folder or .zip of masks")
        self.path, self.key, self.zip = Path(source), key, None
        if not self.path.exists():
            raise UserError(f"{self.path}: {what} not found; point {key} at a folder or .zip of masks")
        exts = tuple(extensions)
        if self.path.is_dir():
            self.names = sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*")
                                if p.suffix.lower() in exts and p.is_file())
        else:
            try:
                self.zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise UserError(f"{self.path}: not a folder or a readable .zip ({exc}); fix {key}") from None
            self.names = sorted(n for n in self.zip.namelist() if n.lower().endswith(exts)
                                and not n.endswith("/") and not n.startswith("__MACOSX/"))
        if not self.names:
            kinds = "PNG masks" if exts == (".png",) else f"mask images ({', '.join(exts)})"
            raise UserError(f"{self.path}: no {kinds} found; point {key} at the folder or .zip holding them")

    def __len__(self):
        return len(self.names)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.zip is not None:
            self.zip.close()

    def gray(self, i: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        name = self.names[i]
        try:
            data = self.zip.read(name) if self.zip is not None else (self.path / name).read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                return np.asarray(im.convert("L"))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, zipfile.BadZipFile) as exc:
            raise UserError(f"{self.path}/{name}: cannot read mask ({exc.__class__.__name__}); "
                            "replace or remove the file") from None

    def load(self, i: int, size: int, polarity: str = "hole_white", threshold: int = 128,
             resize: str = "nearest") -> np.ndarray:
        """Mask ``i`` as 1 = hole at ``size`` x ``size`` (see the module docstring)."""
        return fit(to_hole(self.gray(i), polarity, threshold), size, resize, f"{self.path}/{self.names[i]}")

def border_filter(indices, border: str, files_per_bin: int) -> list[int]:
    """NVIDIA order: within each group of ``files_per_bin`` files the first half has the border constraint."""
    if border not in ("both", "with", "without"):
        raise UserError(f"nvidia_border must be both, with or without, got '{border}'")
    if border != "both" and files_per_bin < 2:
        raise UserError(f"nvidia_per_bin must be >= 2, got {files_per_bin}")
    half = files_per_bin // 2
    return [i for i in indices if border == "both" or ((i % files_per_bin < half) == (border == "with"))]

def _same_bin(a, b) -> bool:
    return abs(a[0] - b[0]) < 1e-9 and abs(a[1] - b[1]) < 1e-9

def import_folder(source, size: int, bins, count: int, seed: int, *, polarity: str = "hole_white",
                  binning: str = "ratio", files_per_bin: int = 0, threshold: int = 128, resize: str = "nearest",
                  n_test: int = 0, protocol: str = "folder", group_of=None, border: str = "both",
                  key: str = "masks.source", extensions=IMAGE_EXTENSIONS):
    """Import binned masks (a list of ``MaskBin``); see the module docstring.

    ``group_of(lo, hi)`` maps a requested bin to its index group (default: its position in ``bins``);
    ``files_per_bin`` (index binning) defaults to ``count``.
    """
    size, bins = check_size(size), check_bins(bins)
    _check_choice(polarity, POLARITIES, "masks.polarity")
    _check_choice(binning, BINNINGS, "masks.binning")
    _check_choice(resize, RESIZES, "masks.resize")
    if not 0 < threshold <= 255:
        raise UserError(f"config key 'masks.threshold': {threshold} must lie in 1..255")
    if binning == "none" and len(bins) != 1:
        raise UserError(f"binning none puts every mask in one bin, but {len(bins)} bins are configured; "
                        "set masks.bins to a single bin, e.g. [[0.0, 1.0]]")
    files_per_bin = files_per_bin or count
    load = dict(polarity=polarity, threshold=threshold, resize=resize)
    with MaskSource(source, key, "NVIDIA mask source" if protocol == "nvidia" else "mask folder", extensions) as src:
        kept = border_filter(range(len(src)), border, files_per_bin)
        loaded = {i: src.load(i, size, **load) for i in kept} if binning == "ratio" else {}
        out = []
        for g, (lo, hi) in enumerate(bins):
            label = bin_label(lo, hi)
            if binning == "index":
                k = group_of(lo, hi) if group_of else g
                cand = [i for i in kept if i // files_per_bin == k]
            elif binning == "ratio":
                cand = [i for i in kept if in_bin(hole_ratio(loaded[i]), lo, hi)]
            else:
                cand = list(kept)
            if not cand:
                raise UserError(f"{src.path}: no mask for bin {label} % ({len(src)} files, {binning} binning"
                                + (f", {files_per_bin} files per bin" if binning == "index" else "")
                                + (f", border {border}" if border != "both" else "")
                                + f", polarity {polarity}); check {key}, masks.polarity and masks.bins")
            rng = np.random.default_rng(seed_for(seed, protocol, label))
            chosen = [cand[j] for j in rng.permutation(len(cand))[:count]]
            if len(chosen) < count:
                log.warning("%s %s %%: only %d masks available, %d requested", protocol, label, len(chosen), count)
            if n_test and len(chosen) < n_test:
                log.warning("%s bin %s %%: %d masks for n_test = %d test images; images will share masks",
                            protocol, label, len(chosen), n_test)
            masks = [loaded[i] if i in loaded else src.load(i, size, **load) for i in chosen]
            outside = sum(not in_bin(hole_ratio(m), lo, hi) for m in masks)
            if outside:
                log.warning("%s %s %%: %d of %d masks have a measured hole ratio outside the bin (%s binning)",
                            protocol, label, outside, len(masks), binning)
            out.append(MaskBin(label, lo, hi, f"imported-{binning}", masks, [src.names[i] for i in chosen]))
            log.info("%s %s %%: %d masks at %d px (%s binning, %s)", protocol, label, len(masks), size, binning,
                     polarity)
    return out

def import_pool(source, size: int, count: int, seed: int, *, polarity: str = "hole_white", threshold: int = 128,
                resize: str = "nearest", protocol: str = "folder", border: str = "both", files_per_bin: int = 2,
                key: str = "masks.train_source", extensions=IMAGE_EXTENSIONS) -> list[np.ndarray]:
    """``count`` training masks (1 = hole): a seeded permutation of the source's files, cycled."""
    size = check_size(size)
    _check_choice(polarity, POLARITIES, "masks.train_polarity")
    _check_choice(resize, RESIZES, "masks.resize")
    with MaskSource(source, key, "NVIDIA mask source" if protocol == "nvidia" else "training mask folder",
                    extensions) as src:
        idx = border_filter(range(len(src)), border, files_per_bin)
        rng = np.random.default_rng(seed_for(seed, protocol, "pool"))
        perm = [idx[i] for i in rng.permutation(len(idx))]
        return [src.load(perm[k % len(perm)], size, polarity, threshold, resize) for k in range(count)]
