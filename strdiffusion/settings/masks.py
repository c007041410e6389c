"""The mask stage's settings (config ``datasets.<name>.masks``): :class:`MaskSettings` (the test masks),
:class:`PoolSettings` (the training pool) and :class:`PairSettings` (the test pairs), beside the other stages'
in :mod:`strdiffusion.settings.jobs`, which re-exports them. Imports no torch: the workflow reads it when parsing."""
from __future__ import annotations

import dataclasses

from strdiffusion.settings.fields import REQUIRED, config_values, option
from strdiffusion.settings.values import BinRef, HoleBin

NVIDIA_PER_BIN = 2000  # files per hole-ratio bin in NVIDIA's irregular mask test set, in its order
POLARITIES = ("hole_white", "known_white")
BINNINGS = ("ratio", "index", "none")
RESIZES = ("nearest", "center_crop")


_MASKS = "datasets.{dataset}.masks."
_NVIDIA, _FOLDER_MASKS = ("protocol", "nvidia"), ("protocol", "folder")


def _protocol(key, default=REQUIRED):
    return option(default, "mask protocol: a generator (lama_*, deepfill, box_*), a fixed RePaint mask (repaint_*), "
                  "nvidia or folder", key=key)


def _nvidia_source():
    return option("", "folder or .zip of the NVIDIA irregular mask test set (protocol nvidia)",
                  key=_MASKS + "nvidia_source", when=_NVIDIA)


def _nvidia_border(key=None):
    return option("both", "NVIDIA masks touching the border, not touching it, or both (protocol nvidia)", key=key,
                  choices=("both", "with", "without"), when=_NVIDIA)


def _nvidia_per_bin():
    return option(NVIDIA_PER_BIN, "files per NVIDIA bin in the source's order (2000 in the official test set)")


def _folder_source(key):
    return option("", "folder or .zip of mask files (protocol folder)", key=key, when=_FOLDER_MASKS)


def _polarity(key):
    return option("hole_white", "which colour is the hole (protocol folder)", key=key, choices=POLARITIES,
                  when=_FOLDER_MASKS)


def _threshold():
    return option(128, "grey value >= threshold is white, 1..255 (protocol folder)", key=_MASKS + "threshold",
                  when=_FOLDER_MASKS)


def _resize():
    return option("nearest", "NEAREST to --size; non-square masks are an error unless center_crop (protocol folder)",
                  key=_MASKS + "resize", choices=RESIZES, when=_FOLDER_MASKS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaskSettings:
    """Test masks (``masks generate``): ``count`` masks per hole-ratio bin whose measured hole ratio lies in
    the bin, drawn by a protocol or imported (nvidia: NVIDIA's irregular mask test set; folder: any folder
    or .zip of mask files, with its polarity, threshold, resizing and binning)."""

    protocol: str = _protocol(_MASKS + "protocol")
    size: int = option(help="mask size in px (square)", key="image_size")
    bins: tuple[HoleBin, ...] = option((), "hole-ratio bins lo:hi,lo:hi (e.g. 0.1:0.2,0.2:0.3); ignored by repaint_*",
                                       key=_MASKS + "bins")
    count: int = option(help="masks per bin", key=_MASKS + "per_bin")
    seed: int = option(help="seed of the masks", key="seed")
    fill: str = option("auto", "how a bin is filled (see strdiffusion.masks.build)", choices=("auto", "natural", "adaptive"))
    nvidia_source: str = _nvidia_source()
    nvidia_binning: str = option("index", "NVIDIA bins by file index or by measured hole ratio (protocol nvidia)",
                                 key=_MASKS + "nvidia_binning", choices=("index", "ratio"), when=_NVIDIA)
    nvidia_border: str = _nvidia_border(_MASKS + "nvidia_border")
    nvidia_per_bin: int = _nvidia_per_bin()
    source: str = _folder_source(_MASKS + "source")
    polarity: str = _polarity(_MASKS + "polarity")
    threshold: int = _threshold()
    resize: str = _resize()
    binning: str = option("ratio", "by measured hole ratio, by file index (--files-per-bin files per bin, sorted) or "
                          "none (one bin) (protocol folder)", key=_MASKS + "binning", choices=BINNINGS, when=_FOLDER_MASKS)
    files_per_bin: int = option(0, "index binning: files per bin in sorted order (0: --count) (protocol folder)",
                                key=_MASKS + "files_per_bin", when=_FOLDER_MASKS)
    n_test: int = option(0, "warn when a bin gets fewer masks than this (protocol folder)", key="datasets.{dataset}.n_test",
                         when=_FOLDER_MASKS)

    @classmethod
    def from_config(cls, config: dict, dataset: str, **_) -> MaskSettings:
        return cls(**config_values(cls, config, dataset=dataset))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PoolSettings:
    """Training masks (``masks pool``): ``count`` masks of mixed hole ratios, drawn by a protocol or imported
    from ``masks.train_source`` (then the protocol is folder)."""

    protocol: str = _protocol(_MASKS + "train_protocol", "lama_medium")  # folder when masks.train_source is given
    size: int = option(help="mask size in px (square)", key="image_size")
    count: int = option(512, "masks in the pool", key=_MASKS + "train_pool")
    seed: int = option(help="seed of the masks", key="seed")
    nvidia_source: str = _nvidia_source()
    nvidia_border: str = _nvidia_border()
    nvidia_per_bin: int = _nvidia_per_bin()
    source: str = _folder_source(_MASKS + "train_source")
    polarity: str = _polarity(_MASKS + "train_polarity")
    threshold: int = _threshold()
    resize: str = _resize()

    @classmethod
    def from_config(cls, config: dict, dataset: str, **_) -> PoolSettings:
        m = config["datasets"][dataset]["masks"]
        protocol = "folder" if m["train_source"] else m["train_protocol"]
        return cls(**config_values(cls, config, given={"protocol": protocol}, dataset=dataset))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairSettings:
    """Test pairs (``masks pairs``): the first ``n_test`` test images (sorted ids) paired with masks of each bin
    by a seeded permutation."""

    bins: tuple[BinRef, ...] = option((), "bins lo:hi,... or labels (10-20,half); default every sub-folder of --masks",
                                      key=_MASKS + "bins")
    n_test: int = option(help="test images per bin", key="datasets.{dataset}.n_test")
    seed: int = option(help="seed of the pairing", key="seed")

    @classmethod
    def from_config(cls, config: dict, dataset: str, **_) -> PairSettings:
        return cls(**config_values(cls, config, dataset=dataset))


# ---------------------------------------------------------------------------------------------
# metrics
