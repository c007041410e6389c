"""Mask generators: pure functions that draw one hole mask (uint8 HxW, 1 = HOLE) from a numpy Generator.

Protocols (each with the parameters its authors published):
- ``lama_thin``, ``lama_medium``, ``lama_thick`` (256-px presets) and ``lama_thick_512`` (512-px
  preset): LaMa's irregular strokes and boxes. Every length, width, margin and box size of a preset
  is multiplied by ``min(H, W) / base`` (base = 256 or 512), so a mask has the same shape relative
  to the image at any size (at 64 px a thick stroke is at most ~26 px wide, not 104). At the base
  size the parameters and distributions are LaMa's (the random stream is numpy's Generator). One
  generator (strokes or boxes) is picked per mask with the normalised probabilities, and masks
  with hole ratio > 0.5 are redrawn (``max_tamper_area``).
- ``deepfill``: DeepFill v2 free-form brush strokes. The step length already scales with the image
  diagonal; the brush width U(12, 40) is for 256 px and is multiplied by ``min(H, W) / 256``.
- ``repaint_half``, ``repaint_expand``, ``repaint_lines``, ``repaint_sr2``: RePaint's fixed masks
  (hole ratios 0.5, 0.9375, 0.5, 0.75 at 256 px), in ``FIXED`` with the name of their single bin
  ('half', 'expand', 'lines', 'sr2').
- ``box_center`` (a centred square whose side hits a target ratio) and ``box_random`` (one
  rectangle, aspect ratio log-uniform in [1/2, 2], at a uniformly random position).

``PROTOCOLS`` gives each random protocol two generators: ``natural(h, w, rng)``, the protocol's own
distribution, and ``adaptive(h, w, rng, lo, hi)``, which grows a mask one unit (a LaMa stroke or
box, a DeepFill brush stroke) at a time until its ratio exceeds ``lo`` and returns it when it is
<= ``hi``, else None; box protocols draw a target ratio in the bin instead ('targeted'). How the
stage uses them to fill a bin is described in ``masks.py``. Nothing here reads or writes files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from strdiffusion.masks.bins import hole_ratio, in_bin

MAX_TAMPER_AREA = 0.5          # LaMa discards masks whose hole ratio exceeds this
_MAX_UNITS = 400               # adaptive fill: strokes/boxes added before a candidate is given up


def _scaled(value: float, scale: float, minimum: int = 0) -> int:
    return max(minimum, int(value * scale + 0.5))


# ----------------------------------------------------------------------------------------------
# LaMa (advimman/lama, saicinpainting/training/data/masks.py)

@dataclass(frozen=True)
class LamaPreset:
    """One LaMa evaluation preset; lengths in px at ``base`` px (see module docstring)."""
    base: int
    min_times: int
    max_times: int
    max_width: int
    max_angle: int
    max_len: int
    box_proba: float = 0.0
    margin: int = 0
    box_min: int = 0
    box_max: int = 0
    box_min_times: int = 0
    box_max_times: int = 0


LAMA_PRESETS = {
    "lama_thin": LamaPreset(256, 4, 50, 10, 4, 40),
    "lama_medium": LamaPreset(256, 4, 5, 50, 4, 100, 0.3, 0, 10, 50, 1, 5),
    "lama_thick": LamaPreset(256, 1, 5, 100, 4, 200, 0.3, 10, 30, 150, 1, 3),
    "lama_thick_512": LamaPreset(512, 1, 5, 250, 4, 450, 0.3, 10, 30, 300, 1, 4),
}


_STROKE_DRAWS = 3 + 3 * 5     # uniforms per LaMa stroke: start x, y, segment count; 3 per segment
_BOX_DRAWS = 4


def _lama_stroke(hole: np.ndarray, i: int, u: list, p: LamaPreset, s: float) -> None:
    """Draw LaMa's i-th irregular stroke (1-5 line segments) into ``hole`` (in place).

    ``u`` holds ``_STROKE_DRAWS`` uniforms in [0, 1); ``int(u * n)`` is LaMa's ``randint(n)`` (one
    bulk draw per mask is much faster than a Generator call per number).
    """
    h, w = hole.shape
    x, y = int(u[0] * w), int(u[1] * h)
    for j in range(1 + int(u[2] * 5)):
        angle = 0.01 + int(u[3 + 3 * j] * p.max_angle)        # integer radians, as in LaMa
        if i % 2 == 0:
            angle = 2 * 3.1415926 - angle
        length = (10 + int(u[4 + 3 * j] * p.max_len)) * s
        width = _scaled(5 + int(u[5 + 3 * j] * p.max_width), s, 1)
        ex = min(max(int(x + length * math.sin(angle)), 0), w)
        ey = min(max(int(y + length * math.cos(angle)), 0), h)
        cv2.line(hole, (x, y), (ex, ey), 1, width)
        x, y = ex, ey


def _lama_box(hole: np.ndarray, u: list, p: LamaPreset, s: float) -> None:
    """Draw one LaMa rectangle into ``hole`` (in place); ``u`` holds ``_BOX_DRAWS`` uniforms."""
    h, w = hole.shape
    margin = _scaled(p.margin, s)
    if h - 2 * margin < 2 or w - 2 * margin < 2:
        margin = 0
    lo = min(_scaled(p.box_min, s, 1), min(h, w) - 1)
    hi = max(lo + 1, min(_scaled(p.box_max, s, 1), h - 2 * margin, w - 2 * margin))
    bw, bh = lo + int(u[0] * (hi - lo)), lo + int(u[1] * (hi - lo))
    x = margin + int(u[2] * max(1, w - 2 * margin - bw + 1))
    y = margin + int(u[3] * max(1, h - 2 * margin - bh + 1))
    hole[y:y + bh, x:x + bw] = 1


def _lama_pick_boxes(rng: np.random.Generator, p: LamaPreset) -> bool:
    # MixedMaskGenerator: ONE generator per mask, probabilities (1 for strokes, box_proba) normalised
    return p.box_proba > 0 and rng.random() < p.box_proba / (1.0 + p.box_proba)


def _lama_once(h: int, w: int, rng: np.random.Generator, p: LamaPreset) -> np.ndarray:
    s = min(h, w) / p.base
    hole = np.zeros((h, w), np.uint8)
    if _lama_pick_boxes(rng, p):
        times = int(rng.integers(p.box_min_times, p.box_max_times + 1))
        for u in rng.random((times, _BOX_DRAWS)).tolist():
            _lama_box(hole, u, p, s)
    else:
        times = int(rng.integers(p.min_times, p.max_times + 1))
        for i, u in enumerate(rng.random((times, _STROKE_DRAWS)).tolist()):
            _lama_stroke(hole, i, u, p, s)
    return hole


def lama(h: int, w: int, rng: np.random.Generator, preset: str | LamaPreset = "lama_medium") -> np.ndarray:
    """A LaMa mask (1 = hole); masks with hole ratio > 0.5 are redrawn (LaMa's max_tamper_area)."""
    p = LAMA_PRESETS[preset] if isinstance(preset, str) else preset
    while True:
        hole = _lama_once(h, w, rng, p)
        if hole_ratio(hole) <= MAX_TAMPER_AREA:
            return hole


def lama_thin(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """LaMa thin 256 preset (strokes only), lengths and widths scaled by min(h, w)/256."""
    return lama(h, w, rng, "lama_thin")


def lama_medium(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """LaMa medium 256 preset (strokes or boxes), lengths, widths and box sizes scaled by min(h, w)/256."""
    return lama(h, w, rng, "lama_medium")


def lama_thick(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """LaMa thick 256 preset (strokes or boxes), lengths, widths and box sizes scaled by min(h, w)/256."""
    return lama(h, w, rng, "lama_thick")


def lama_thick_512(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """LaMa thick 512 preset, lengths, widths and box sizes scaled by min(h, w)/512."""
    return lama(h, w, rng, "lama_thick_512")


def _lama_adaptive(preset: str) -> Callable:
    p = LAMA_PRESETS[preset]

    def grow(h, w, rng, lo, hi):
        s = min(h, w) / p.base
        hole = np.zeros((h, w), np.uint8)
        boxes = _lama_pick_boxes(rng, p)
        hi = min(hi, MAX_TAMPER_AREA)
        for i in range(_MAX_UNITS):
            if boxes:
                _lama_box(hole, rng.random(_BOX_DRAWS).tolist(), p, s)
            else:
                _lama_stroke(hole, i, rng.random(_STROKE_DRAWS).tolist(), p, s)
            r = hole_ratio(hole)
            if r > lo:
                return hole if r <= hi else None
        return None

    return grow


# ----------------------------------------------------------------------------------------------
# DeepFill v2 (JiahuiYu/generative_inpainting, inpaint_ops.py::brush_stroke_mask)

def _deepfill_stroke(draw, h: int, w: int, rng: np.random.Generator) -> None:
    """Draw one DeepFill v2 brush stroke with PIL ``draw`` (fill 1)."""
    mean_angle, angle_range = 2 * math.pi / 5, 2 * math.pi / 15
    avg_r = math.sqrt(h * h + w * w) / 8
    num_vertex = int(rng.integers(4, 12))
    angle_min = mean_angle - rng.uniform(0, angle_range)
    angle_max = mean_angle + rng.uniform(0, angle_range)
    angles = [2 * math.pi - rng.uniform(angle_min, angle_max) if i % 2 == 0 else rng.uniform(angle_min, angle_max)
              for i in range(num_vertex)]
    # the reference unpacks PIL's (W, H) size as (h, w); identical for square images
    vertex = [(int(rng.integers(0, w)), int(rng.integers(0, h)))]
    for i in range(num_vertex):
        r = float(np.clip(rng.normal(avg_r, avg_r // 2), 0, 2 * avg_r))
        nx = np.clip(vertex[-1][0] + r * math.cos(angles[i]), 0, w)
        ny = np.clip(vertex[-1][1] + r * math.sin(angles[i]), 0, h)
        vertex.append((int(nx), int(ny)))
    width = max(1, int(rng.uniform(12, 40) * min(h, w) / 256))
    draw.line(vertex, fill=1, width=width)
    for vx, vy in vertex:
        draw.ellipse((vx - width // 2, vy - width // 2, vx + width // 2, vy + width // 2), fill=1)


def deepfill(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """DeepFill v2 free-form mask (1 = hole): 1-3 brush strokes, width U(12, 40) * min(h, w)/256."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        _deepfill_stroke(draw, h, w, rng)
    # the reference's random flips discard their result: nothing to do
    return np.asarray(img, dtype=np.uint8).copy()


def _deepfill_adaptive(h, w, rng, lo, hi):
    from PIL import Image, ImageDraw

    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    for _ in range(_MAX_UNITS):
        _deepfill_stroke(draw, h, w, rng)
        hole = np.asarray(img, dtype=np.uint8)
        r = hole_ratio(hole)
        if r > lo:
            return hole.copy() if r <= hi else None
    return None


# ----------------------------------------------------------------------------------------------
# RePaint fixed masks (andreas128/RePaint): 1 = hole here, the PNGs there have 255 = known

def repaint_half(h: int, w: int, rng=None) -> np.ndarray:
    """'genhalf': the left half is known, the right half is the hole (ratio 0.5 for even w)."""
    hole = np.ones((h, w), np.uint8)
    hole[:, : w // 2] = 0
    return hole


def repaint_expand(h: int, w: int, rng=None) -> np.ndarray:
    """'ex64': only the centre (h/4 x w/4; 64x64 at 256) is known (ratio 0.9375)."""
    hole = np.ones((h, w), np.uint8)
    kh, kw = h // 4, w // 4
    top, left = (h - kh) // 2, (w - kw) // 2
    hole[top:top + kh, left:left + kw] = 0
    return hole


def repaint_lines(h: int, w: int, rng=None) -> np.ndarray:
    """'ev2li': odd rows (0-based) are known, even rows are the hole (ratio 0.5)."""
    hole = np.ones((h, w), np.uint8)
    hole[1::2, :] = 0
    return hole


def repaint_sr2(h: int, w: int, rng=None) -> np.ndarray:
    """'nn2' (2x super-resolution): pixels with odd row and odd column are known (ratio 0.75)."""
    hole = np.ones((h, w), np.uint8)
    hole[1::2, 1::2] = 0
    return hole


FIXED = {"repaint_half": ("half", repaint_half), "repaint_expand": ("expand", repaint_expand),
         "repaint_lines": ("lines", repaint_lines), "repaint_sr2": ("sr2", repaint_sr2)}


# ----------------------------------------------------------------------------------------------
# Boxes

def box_center(h: int, w: int, rng=None, ratio: float = 0.25) -> np.ndarray:
    """A centred square (1 = hole) whose side is the integer closest to sqrt(ratio * h * w)."""
    side = int(min(max(round(math.sqrt(ratio * h * w)), 1), min(h, w)))
    return _centred_square(h, w, side)


def _centred_square(h: int, w: int, side: int) -> np.ndarray:
    hole = np.zeros((h, w), np.uint8)
    top, left = (h - side) // 2, (w - side) // 2
    hole[top:top + side, left:left + side] = 1
    return hole


def box_random(h: int, w: int, rng: np.random.Generator, ratio: float | None = None) -> np.ndarray:
    """One rectangle (1 = hole) of area ``ratio`` (default U(0.05, 0.5)), aspect log-uniform in
    [1/2, 2], at a uniformly random position inside the image."""
    if ratio is None:
        ratio = rng.uniform(0.05, 0.5)
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    bh = int(min(max(round(math.sqrt(ratio * h * w / aspect)), 1), h))
    bw = int(min(max(round(ratio * h * w / bh), 1), w))
    y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    hole = np.zeros((h, w), np.uint8)
    hole[y:y + bh, x:x + bw] = 1
    return hole


def _box_random_targeted(h, w, rng, lo, hi):
    return box_random(h, w, rng, ratio=rng.uniform(max(lo, 1.0 / (h * w)), hi))


def _box_center_targeted(h, w, rng, lo, hi):
    n = h * w
    sides = [s for s in range(1, min(h, w) + 1) if in_bin(s * s / n, lo, hi)]
    return _centred_square(h, w, int(rng.choice(sides))) if sides else None


def _box_center_natural(h, w, rng):
    return box_center(h, w, rng, ratio=rng.uniform(0.05, 0.5))


# ----------------------------------------------------------------------------------------------
# Protocol table

@dataclass(frozen=True)
class Protocol:
    """A random protocol: its natural and adaptive generators (module docstring) and how the stage may fill bins."""
    name: str
    natural: Callable           # (h, w, rng) -> hole
    adaptive: Callable          # (h, w, rng, lo, hi) -> hole in the bin, or None (discarded)
    auto_natural: bool = True   # auto fill may use natural rejection sampling
    max_ratio: float = 1.0      # no mask of the protocol exceeds this hole ratio
    adaptive_name: str = "adaptive"


PROTOCOLS = {name: Protocol(name, (lambda n: lambda h, w, rng: lama(h, w, rng, n))(name), _lama_adaptive(name),
                            max_ratio=MAX_TAMPER_AREA) for name in LAMA_PRESETS}
PROTOCOLS["deepfill"] = Protocol("deepfill", deepfill, _deepfill_adaptive)
PROTOCOLS["box_random"] = Protocol("box_random", box_random, _box_random_targeted, False, adaptive_name="targeted")
PROTOCOLS["box_center"] = Protocol("box_center", _box_center_natural, _box_center_targeted, False,
                                   adaptive_name="targeted")
