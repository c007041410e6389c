"""Own photos at any size: the diffusion networks work in a window around each hole, at their trained size.

The networks learn on square crops of one size (``image_size``, 64 px in the default). Run on a whole
photograph of another size they see textures at a scale they never learned, and a large photograph costs
minutes and gigabytes. So :func:`inpaint_in_windows`, for each image:

1. finds the connected hole regions (8-connected) and puts a square window around each: the region's
   bounding box widened by ``window_margin`` times its longer side on every side, at least the trained size,
   moved inside the image (cut to the image where it is longer than a side of it: the only case where a
   window is not square, and so is stretched to the square trained size); windows that overlap or touch are
   merged into one square around them, until none do;
2. resizes every window to the trained size (area averaging when shrinking, bilinear when enlarging; a
   pixel of the small window is a hole when any hole pixel falls in it, so no hole content reaches the
   network as known); the structure maps are computed from the small window;
3. samples the image's windows together (batches of ``batch_size``), and
4. resizes each window's fill back to the window's size and writes it into the hole pixels only: every
   known pixel of the result is the input's, byte for byte.

The trained size is the denoiser's checkpoint's ``image_size`` (every training run records it), else
its training settings' ``size``; where neither is recorded it is 256 px for the authors' bare state
dicts (the paper trains on 256 px images) and 64 px for our own files (the config's default
``image_size``). An image no larger than the trained size is inpainted whole, as ``--full-image`` does
for every image.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import sys

import cv2
import numpy as np

from strdiffusion.settings.fields import option

log = logging.getLogger("strdiffusion.inpainting.run")

AUTHORS_SIZE = 256   # the paper's training size: the authors' bare state dicts record none
OWN_DEFAULT_SIZE = 64  # the config's default image_size: our checkpoints that record none


@dataclasses.dataclass(frozen=True)
class WindowSettings:
    """How own photos are cut into windows around their holes (``strdiffusion inpaint --image``)."""

    window_margin: float = option(0.5, "context around each hole region: this multiple of the region's longer "
                                       "side on every side (a window is at least the networks' trained size)")
    full_image: bool = option(False, "run the networks on the whole image at its own size, not on a window "
                                     "around each hole at their trained size")

    def __post_init__(self):
        from strdiffusion.io.errors import UserError

        if not (self.window_margin >= 0 and math.isfinite(self.window_margin)):
            raise UserError(f"--window-margin must be a number >= 0 (a multiple of each hole's longer side), "
                            f"got {self.window_margin}")


@dataclasses.dataclass(frozen=True)
class Box:
    """Rows ``y0:y1`` and columns ``x0:x1`` of an image (half-open)."""
    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def overlaps(self, other: Box) -> bool:
        return self.y0 < other.y1 and other.y0 < self.y1 and self.x0 < other.x1 and other.x0 < self.x1

    def union(self, other: Box) -> Box:
        return Box(min(self.y0, other.y0), min(self.x0, other.x0), max(self.y1, other.y1), max(self.x1, other.x1))

    def __str__(self) -> str:
        return f"{self.width}x{self.height} at ({self.x0}, {self.y0})"


def trained_size(metadata: dict) -> tuple[int, str]:
    """(side in px the networks were trained at, where that comes from), from the runner's checkpoint
    metadata (network kind -> metadata): the denoiser's (texture, else IR-SDE) recorded size."""
    kind = "texture" if "texture" in metadata else "irsde"
    meta = metadata.get(kind, {})
    path = meta.get("path", f"the {kind} checkpoint")
    sizes = {k: m.get("image_size") for k, m in metadata.items() if m.get("image_size")}
    if len(set(sizes.values())) > 1:
        log.warning("the networks were trained at different sizes (%s); windows use the %s network's",
                    ", ".join(f"{k} {v} px" for k, v in sizes.items()), kind)
    if meta.get("image_size"):
        return int(meta["image_size"]), f"recorded in {path}"
    size = (meta.get("train_settings") or {}).get("size")
    if size:
        return int(size), f"training settings in {path}"
    if meta.get("format") == "state_dict":
        return AUTHORS_SIZE, f"not recorded in the bare state dict {path}: the paper's {AUTHORS_SIZE} px"
    return OWN_DEFAULT_SIZE, f"not recorded in {path}: the default image_size {OWN_DEFAULT_SIZE} px"


def hole_regions(hole: np.ndarray) -> list[Box]:
    """Bounding boxes of the 8-connected regions of the boolean HxW ``hole``."""
    _, _, stats, _ = cv2.connectedComponentsWithStats(hole.astype(np.uint8), connectivity=8)
    return [Box(int(y), int(x), int(y + h), int(x + w)) for x, y, w, h, _ in stats[1:]]


def _square(box: Box, side: int, shape) -> Box:
    """A ``side`` x ``side`` box centred on ``box`` (which it contains when ``side`` is at least its sides), moved
    inside an image of ``shape``; cut to the image along a dimension shorter than ``side``."""

    def span(lo: int, hi: int, n: int) -> tuple[int, int]:
        s = min(side, n)
        start = min(max((lo + hi - s) // 2, 0), n - s)
        return start, start + s

    (y0, y1), (x0, x1) = span(box.y0, box.y1, shape[0]), span(box.x0, box.x1, shape[1])
    return Box(y0, x0, y1, x1)


def windows(hole: np.ndarray, margin: float, min_side: int) -> list[Box]:
    """The windows around the holes of boolean HxW ``hole`` (see the module docstring), top to bottom: no two
    overlap, and each hole region lies inside one of them."""
    boxes = []
    for region in hole_regions(hole):
        longer = max(region.height, region.width)
        boxes.append(_square(region, max(longer + 2 * math.ceil(margin * longer), min_side), hole.shape))
    while True:
        # windows that overlap or touch, found at once on a canvas of the image (a photo may have thousands of holes)
        canvas = np.zeros(hole.shape, np.uint8)
        for box in boxes:
            canvas[box.slices] = 1
        labels = cv2.connectedComponents(canvas, connectivity=4)[1]
        groups: dict[int, list[Box]] = {}
        for box in boxes:
            groups.setdefault(int(labels[box.y0, box.x0]), []).append(box)
        if all(len(group) == 1 for group in groups.values()):
            return sorted(boxes, key=lambda b: (b.y0, b.x0))
        boxes = []
        for group in groups.values():
            both = functools.reduce(Box.union, group)
            boxes.append(group[0] if len(group) == 1 else _square(both, max(both.height, both.width), hole.shape))


def _resize(a: np.ndarray, height: int, width: int) -> np.ndarray:
    shrinking = height <= a.shape[0] and width <= a.shape[1]
    return cv2.resize(np.ascontiguousarray(a), (width, height),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def window_input(image: np.ndarray, hole: np.ndarray, box: Box, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The window ``box`` of uint8 RGB ``image`` at ``size`` x ``size`` and its float mask (1 = known): a pixel is
    a hole where any hole pixel of ``hole`` falls in it."""
    small = _resize(image[box.slices], size, size)
    hole_share = _resize(hole[box.slices].astype(np.float32), size, size)
    return small, (hole_share <= 0).astype(np.float32)


def paste_fill(out: np.ndarray, fill: np.ndarray, hole: np.ndarray, box: Box) -> None:
    """Write uint8 ``fill`` (a window's result at the trained size), resized to ``box``, into the hole pixels of
    ``out`` inside ``box``; the other pixels of ``out`` are not touched."""
    back = _resize(fill, box.height, box.width)
    inside = hole[box.slices]
    out[box.slices][inside] = back[inside]


def use_windows(shape, size: int, settings: WindowSettings) -> bool:
    """Whether an image of ``shape`` is inpainted in windows: not with ``--full-image``, and only when it is larger
    than the trained ``size``."""
    return not settings.full_image and max(shape[:2]) > size


def inpaint_in_windows(runner, image_id: str, image: np.ndarray, mask: np.ndarray, settings: WindowSettings,
                       batch_size: int, save_structure=None) -> np.ndarray:
    """Inpaint uint8 RGB ``image`` where float ``mask`` is 0 (1 = known) in windows with a
    :class:`strdiffusion.inpainting.diffusion.DiffusionRunner`; returns the composited uint8 result.

    The windows are sampled together, ``batch_size`` at a time, with noise seeded from (seed, ``image_id`` and the
    window's number). ``save_structure(k, structure)``, when given, receives the k-th window's final structure
    state (uint8, at the trained size)."""
    from tqdm import tqdm

    size = trained_size(runner.metadata)[0]
    hole = mask < 0.5
    boxes = windows(hole, settings.window_margin, size)
    log.info("%s: %dx%d, %d hole region(s) in %d window(s) at %d px: %s", image_id, image.shape[1], image.shape[0],
             len(hole_regions(hole)), len(boxes), size, "; ".join(map(str, boxes)))
    result = image.copy()
    step = max(int(batch_size), 1)
    with tqdm(total=len(boxes), desc=f"{image_id}: windows", unit="window", file=sys.stderr) as bar:
        for start in range(0, len(boxes), step):
            chunk = list(enumerate(boxes))[start:start + step]
            inputs = [window_input(image, hole, box, size) for _, box in chunk]
            fills, structs = runner.run([i[0] for i in inputs], [i[1] for i in inputs], [None] * len(chunk),
                                        [f"{image_id}#window{k}" for k, _ in chunk], "")
            for n, (k, box) in enumerate(chunk):
                paste_fill(result, fills[n], hole, box)
                if save_structure is not None and structs is not None:
                    save_structure(k, structs[n])
            bar.update(len(chunk))
    return result
