"""Inpainting stage: one shard of test pairs per job, or the user's own images.

Pipeline mode writes ``OUT/<image_id>.png`` — the composited result (known pixels from the
ground truth, holes from the method) — for the shard's pairs, into a temporary folder renamed
onto OUT at the end, so a killed job leaves no half-written shard. SIGTERM or SIGUSR1 drops the batch in
hand, removes the temporary folder and exits with status 75 (:mod:`strdiffusion.runtime.signals`); while it runs
the job holds ``OUT.lock``, so a second job on the same shard refuses to start (:mod:`strdiffusion.runtime.lock`).

Own-image mode (``--image/--mask/--out``) inpaints the user's files of any size: the diffusion methods in a
window around each hole at the networks' trained size (:mod:`strdiffusion.inpainting.window`).
The diffusion methods run through :class:`strdiffusion.inpainting.diffusion.DiffusionRunner`; this module
reads and writes the files and turns the command-line options into its settings.

Mask convention everywhere: mask FILES are white (255) = HOLE; in memory ``mask`` is 1 = known.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd

from strdiffusion.core.constants import SamplerConfig
from strdiffusion.io.errors import UserError
from strdiffusion.io.files import atomic_dir, save_png_atomic, write_csv_atomic, write_text_atomic
from strdiffusion.io.images import IMAGE_EXTENSIONS, equal_size_runs, read_image_rgb, read_mask
from strdiffusion.io.pairs import read_pairs
from strdiffusion.runtime.environment import to_log_and_console
from strdiffusion.runtime.lock import StateLock
from strdiffusion.runtime.signals import raise_on_notice
from strdiffusion.settings.jobs import RunSettings, SamplerSettings, ShardSettings
from strdiffusion.settings.methods import CLASSICAL, DIFFUSION, METHODS, method_networks

if TYPE_CHECKING:
    from strdiffusion.inpainting.diffusion import DiffusionRunner
    from strdiffusion.inpainting.window import WindowSettings

log = logging.getLogger("strdiffusion.inpainting.run")

# per diffusion shard: share of each image's hole pixels outside [0, 1] before clamping
CLIPPED_CSV = "clipped.csv"
PRECISION_JSON = "precision.json"  # the numerics a shard was sampled with (strdiffusion.runtime.precision)

def classical_inpaint(method: str, image: np.ndarray, mask: np.ndarray, radius: int = 3) -> np.ndarray:
    """Inpaint uint8 RGB ``image`` where ``mask`` == 0 (holes) with a classical method.

    Hole pixels of ``image`` are zeroed first, so no ground truth leaks into the result.
    ``mean_fill`` fills every hole pixel with the mean colour of the known pixels: the floor a learned
    model must clear to have learned anything.
    Returns the composited uint8 RGB result.
    """
    known = mask[..., None] > 0.5
    degraded = np.where(known, image, 0).astype(np.uint8)
    hole_u8 = (~known[..., 0]).astype(np.uint8) * 255
    if method == "mean_fill":
        colour = image[known[..., 0]].astype(np.float64).mean(0) if known.any() else np.full(3, 127.5)
        out = np.broadcast_to(np.round(colour).astype(np.uint8), image.shape)
    elif method == "telea":
        out = cv2.inpaint(degraded, hole_u8, radius, cv2.INPAINT_TELEA)
    elif method == "navier_stokes":
        out = cv2.inpaint(degraded, hole_u8, radius, cv2.INPAINT_NS)
    elif method == "biharmonic":
        from skimage.restoration import inpaint_biharmonic

        out = inpaint_biharmonic(degraded.astype(np.float64) / 255.0, hole_u8 > 0, channel_axis=-1)
        out = np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
    else:
        raise UserError(f"unknown classical method '{method}'; choose one of {', '.join(CLASSICAL)}")
    return np.where(known, image, out).astype(np.uint8)

def shard_rows(pairs: pd.DataFrame, bin_name: str, shard: int, shard_size: int) -> pd.DataFrame:
    """Rows of ``pairs`` for ``bin_name`` that fall in shard ``shard`` (pair order, shard_size each)."""
    rows = pairs[pairs["bin"].astype(str) == str(bin_name)].reset_index(drop=True)
    if rows.empty:
        raise UserError(f"no pairs for bin '{bin_name}' in the pairs file; regenerate masks or fix the bins")
    start = shard * shard_size
    if start >= len(rows):
        raise UserError(f"shard {shard} is empty: bin '{bin_name}' has {len(rows)} pairs, shard size {shard_size}")
    return rows.iloc[start:start + shard_size]

def load_pair(gt_dir: Path, row) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB image ``gt_dir/<row.image_id>.png`` and its mask ``row.mask`` (float, 1 = known)."""
    image = read_image_rgb(Path(gt_dir) / f"{row.image_id}.png")
    mask = read_mask(row.mask, size=image.shape[:2])
    return image, mask

@dataclasses.dataclass(frozen=True)
class Diffusion:
    """How the diffusion methods sample: the sampler's and the run's settings, and the network files (an explicit
    file per network kind in ``files``, else ``folder/<net>.pt``)."""
    sampler: SamplerSettings = dataclasses.field(default_factory=SamplerSettings)
    run: RunSettings = dataclasses.field(default_factory=RunSettings)
    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    folder: Path | None = None

    def config(self, method: str) -> SamplerConfig:
        """The reverse process's constants; resampling only for ``strdiffusion``."""
        return dataclasses.replace(self.sampler, resample=(method == "strdiffusion")).sampler()

    def checkpoint_paths(self, method: str) -> dict[str, Path]:
        """Checkpoint of each network ``method`` needs."""
        return {net: self._checkpoint_path(net, method) for net in method_networks(method)}

    def _checkpoint_path(self, net: str, method: str) -> Path:
        if self.files.get(net):
            return Path(self.files[net])
        if self.folder is not None:
            path = self.folder / f"{net}.pt"
            if not path.is_file():
                raise UserError(f"--method {method} needs the {net} network, but {path} does not exist "
                                f"(--checkpoints {self.folder} should hold "
                                f"{', '.join(n + '.pt' for n in method_networks(method))})")
            return path
        raise UserError(f"--method {method} needs the {net} network: pass --{net}-checkpoint FILE "
                        f"or --checkpoints DIR holding {net}.pt")

    def runner(self, method: str) -> "DiffusionRunner":
        from strdiffusion.inpainting.diffusion import (
            DiffusionRunner,  # torch: not loaded by the classical methods' jobs
        )

        return DiffusionRunner(method, self.checkpoint_paths(method), self.config(method), self.run)

@dataclasses.dataclass(frozen=True)
class ShardJob:
    """One pipeline job: shard ``shard`` (of ``shard_size`` pairs) of bin ``bin`` of the pairs CSV, inpainted by
    ``method`` into the folder ``out``; ``structure_dir`` holds the test images' gray/ and edge/ maps."""
    pairs: Path
    gt_dir: Path
    bin: str
    out: Path
    method: str
    shard: int = 0
    shard_size: int = ShardSettings().shard_size
    structure_dir: Path | None = None
    lock_wait: float = 0.0  # seconds to wait while a live job writes the same shard (-1: while it lives)

def run_shard(job: ShardJob, diffusion: Diffusion = Diffusion()) -> None:
    """Inpaint the job's shard into ``job.out``, written whole or not at all. One job writes a shard at a time
    (a lock beside it); a second one refuses at once, or with ``lock_wait`` waits for the first to end, and
    keeps the shard that one finished meanwhile (a job of a restarted driver beside the old driver's job)."""
    pairs = read_pairs(job.pairs)
    rows = shard_rows(pairs, job.bin, job.shard, job.shard_size)
    out = job.out
    lock = StateLock(out.with_name(out.name + ".lock"), f"the shard {out}")
    finished_before = out.is_dir()
    lock.acquire_waiting(job.lock_wait, functools.partial(to_log_and_console, log))
    try:
        if not finished_before and out.is_dir():
            log.info("%s: shard %s was finished by the job that held its lock; kept", job.method, out)
            return
        _write_shard(job, diffusion, rows)
    finally:
        lock.release()
    log.info("%s: inpainted %d images of bin %s (shard %d) -> %s", job.method, len(rows), job.bin, job.shard, out)


def _write_shard(job: ShardJob, diffusion: Diffusion, rows) -> None:
    with raise_on_notice(), atomic_dir(job.out) as tmp:
        if job.method in CLASSICAL:
            for row in rows.itertuples():
                image, mask = load_pair(job.gt_dir, row)
                save_png_atomic(tmp / f"{row.image_id}.png", classical_inpaint(job.method, image, mask))
        elif job.method in DIFFUSION:
            inpaint_rows(job, diffusion, rows, tmp)
        else:
            raise UserError(f"unknown method '{job.method}'; choose from {', '.join(METHODS)}")

# ---------------------------------------------------------------------------------------------
# pipeline mode and own images (diffusion methods)

def _size_groups(items, batch_size: int):
    """Consecutive chunks of at most ``batch_size`` items (id, image, ...) of equal image size, order kept."""
    for idx in equal_size_runs([item[1].shape[:2] for item in items], max(int(batch_size), 1)):
        yield [items[i] for i in idx]

def _load_structure(structure_dir: Path, image_id: str, shape):
    from PIL import Image

    from strdiffusion.data.structure import load_gray

    gray_p, edge_p = structure_dir / "gray" / f"{image_id}.png", structure_dir / "edge" / f"{image_id}.png"
    if not gray_p.is_file() or not edge_p.is_file():
        raise UserError(f"structure maps of {image_id} missing in {structure_dir} (expected gray/ and edge/ "
                        f"{image_id}.png); rerun the structure stage")
    gray = load_gray(gray_p)
    with Image.open(edge_p) as im:
        edge = (np.asarray(im.convert("L")) > 127).astype(np.float32)
    if gray.shape != tuple(shape) or edge.shape != tuple(shape):
        raise UserError(f"structure maps of {image_id} in {structure_dir} are {gray.shape[::-1]} but the image is "
                        f"{tuple(shape)[::-1]}; rerun the structure stage")
    return gray, edge

def inpaint_rows(job: ShardJob, diffusion: Diffusion, rows, out_dir) -> None:
    """Pipeline mode: inpaint the pairs in ``rows`` (image_id, bin, mask) into ``out_dir/<image_id>.png``."""
    out_dir = Path(out_dir)
    runner = diffusion.runner(job.method)
    structure_dir = job.structure_dir
    items = []
    for row in rows.itertuples():
        image, mask = load_pair(job.gt_dir, row)
        st = None
        if structure_dir is not None and job.method != "irsde":
            st = _load_structure(structure_dir, str(row.image_id), image.shape[:2])
        items.append((str(row.image_id), image, mask, st, str(row.bin)))
    for chunk in _size_groups(items, diffusion.run.batch_size):
        bins = {c[4] for c in chunk}
        for bin_name in sorted(bins):
            part = [c for c in chunk if c[4] == bin_name]
            results, structs = runner.run([c[1] for c in part], [c[2] for c in part], [c[3] for c in part],
                                          [c[0] for c in part], bin_name)
            for k, (image_id, *_rest) in enumerate(part):
                save_png_atomic(out_dir / f"{image_id}.png", results[k])
                if diffusion.run.save_structure and structs is not None:
                    save_png_atomic(out_dir / "structure" / f"{image_id}.png", structs[k])
    clipped = pd.DataFrame({"image_id": list(runner.clipped), "clipped": list(runner.clipped.values())})
    write_csv_atomic(clipped, out_dir / CLIPPED_CSV)
    write_text_atomic(out_dir / PRECISION_JSON, json.dumps(runner.precision, indent=2, sort_keys=True) + "\n")
    log.info("%s: %s", job.method, runner.summary())

def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)

def _user_pairs(image: Path, mask: Path | None, out: Path | None) -> list[tuple[Path, Path, Path]]:
    """(image, mask, output) paths of the user's files; folders are matched by file stem."""
    if mask is None:
        raise UserError("--image needs --mask (white pixels = holes to fill)")
    if out is None:
        raise UserError("--image needs --out (an output PNG, or a folder when --image is a folder)")
    if not image.exists():
        raise UserError(f"--image {image} does not exist")
    if not mask.exists():
        raise UserError(f"--mask {mask} does not exist")
    if image.is_dir():
        if not mask.is_dir():
            raise UserError(f"--image {image} is a folder, so --mask must be a folder too (masks matched by file name)")
        if out.suffix.lower() in IMAGE_EXTENSIONS:
            raise UserError(f"--image {image} is a folder, so --out must be a folder, not {out}")
        masks = {p.stem: p for p in _list_images(mask)}
        images = _list_images(image)
        if not images:
            raise UserError(f"--image {image}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
        missing = [p.name for p in images if p.stem not in masks]
        if missing:
            raise UserError(f"no mask in {mask} for {len(missing)} image(s): {', '.join(missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''} (masks are matched by file name stem)")
        return [(p, masks[p.stem], out / f"{p.stem}.png") for p in images]
    if mask.is_dir():
        cands = [p for p in _list_images(mask) if p.stem == image.stem]
        if not cands:
            raise UserError(f"no mask named {image.stem}.* in {mask}")
        mask = cands[0]
    if out.is_dir() or out.suffix == "":
        out = out / f"{image.stem}.png"
    return [(image, mask, out)]

def inpaint_user_images(image: Path, mask: Path | None, out: Path | None, method: str,
                        diffusion: Diffusion = Diffusion(), window: "WindowSettings | None" = None) -> None:
    """Inpaint the user's image(s) ``image`` (a file or a folder) with ``mask`` (a file or a folder of masks matched
    by name) into ``out`` (a PNG, or a folder); on the command line ``--image/--mask/--out``.

    Any image size. The diffusion methods work in a window around each hole at the networks' trained size
    (:mod:`strdiffusion.inpainting.window`); with ``window.full_image``, and for an image no larger than the
    trained size, on the whole image, reflect-padded on the bottom/right to the networks' multiple and
    cropped back. The classical methods work on the whole image. Known pixels of every result are the input's.
    The mask must have the image's size. A mask without holes copies the
    image (with a warning). A mask without known pixels is allowed (the method then generates the
    whole image from its structure prior alone) but warned about, since nothing guides it.
    Structure (gray, Canny edges with ``--sigma``) is computed from the image (or window) as given; with
    ``--save-structure`` a window's final structure state goes to ``structure/<name>_window<k>.png``.
    """
    from strdiffusion.inpainting.window import WindowSettings

    window = window or WindowSettings()
    pairs = _user_pairs(image, mask, out)
    items = []
    for image_p, mask_p, out_p in pairs:
        image = read_image_rgb(image_p)
        mask = read_mask(mask_p, size=image.shape[:2])
        if mask.min() > 0.5:
            warnings.warn(f"{mask_p}: the mask has no hole (no white pixel); {out_p} is a copy of {image_p}",
                          stacklevel=2)
            log.warning("%s: mask has no hole; copying %s", mask_p, image_p)
            save_png_atomic(out_p, image)
            continue
        if mask.max() < 0.5:
            warnings.warn(f"{mask_p}: the mask is all hole (no known pixel); the result is not guided "
                          "by the image at all", stacklevel=2)
            log.warning("%s: mask has no known pixel; the result ignores the image", mask_p)
        if method in CLASSICAL:
            save_png_atomic(out_p, classical_inpaint(method, image, mask))
            continue
        items.append((image_p.stem, image, mask, None, out_p))
    if not items:
        return
    runner = diffusion.runner(method)
    items = _inpaint_windowed(runner, items, diffusion.run, window)
    for chunk in _size_groups(items, diffusion.run.batch_size):
        results, structs = runner.run([c[1] for c in chunk], [c[2] for c in chunk], [None] * len(chunk),
                                      [c[0] for c in chunk], "")
        for k, c in enumerate(chunk):
            save_png_atomic(c[4], results[k])
            if diffusion.run.save_structure and structs is not None:
                save_png_atomic(c[4].parent / "structure" / c[4].name, structs[k])
            log.info("inpainted %s -> %s", c[0], c[4])
    log.info("%s: %s", method, runner.summary())


def _inpaint_windowed(runner: "DiffusionRunner", items: list, run: RunSettings, window: "WindowSettings") -> list:
    """Inpaint, one image at a time, the ``items`` (id, image, mask, structure, output) that
    :func:`strdiffusion.inpainting.window.use_windows` sends to windows, and write them; return the others."""
    from strdiffusion.inpainting.window import inpaint_in_windows, trained_size, use_windows

    size, source = trained_size(runner.metadata)
    log.info("the networks' trained size: %d px (%s)%s", size, source,
             "; --full-image: whole images" if window.full_image else "")
    whole = []
    for item in items:
        image_id, image, mask, _, out_p = item
        if not use_windows(image.shape, size, window):
            whole.append(item)
            continue

        def save_structure(k, struct, out_p=out_p):
            save_png_atomic(out_p.parent / "structure" / f"{out_p.stem}_window{k}.png", struct)

        result = inpaint_in_windows(runner, image_id, image, mask, window, run.batch_size,
                                    save_structure if run.save_structure else None)
        save_png_atomic(out_p, result)
        log.info("inpainted %s -> %s", image_id, out_p)
    return whole
