"""Data set preparation: square crops at the working size, split into train and test.

Sources:
- ``builtin``: real photographs shipped inside installed wheels (scikit-image and matplotlib
  sample data). Each photograph is cut spatially BEFORE resizing: its top 75 % feeds the
  training crops, its bottom 25 % the test crops, so no test pixel comes from a region used for
  training.
- ``folder``: any folder tree of JPEG/PNG/WebP/BMP/TIFF files, split by given file lists or
  deterministically by a hash of (seed, relative path), so adding a file never moves another.

Output (``--out DIR``): ``DIR/train/<id>.png``, ``DIR/test/<id>.png`` (8-bit RGB, size x size) and
``DIR/manifest.csv`` with columns ``id, source, split, width, height, status``. The three are
written into a temporary folder and renamed into place, so a failed run leaves nothing behind.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from strdiffusion.core.seeds import seed_for
from strdiffusion.io.errors import UndecodableImage, UserError
from strdiffusion.io.files import atomic_dir, write_csv_atomic
from strdiffusion.io.images import IMAGE_EXTENSIONS, read_image_rgb

log = logging.getLogger("strdiffusion.data.prepare")

BUILTIN_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "stereo_motorcycle", "camera", "brick", "grass", "gravel", "grace_hopper")
TEST_BAND = 0.25          # bottom fraction of each builtin photograph reserved for test crops
TRAIN_SCALES = (2, 3, 4)  # training band resized to k * size px high, k in TRAIN_SCALES


def load_builtin(name: str) -> np.ndarray:
    """Return a builtin photograph as uint8 RGB (HxWx3)."""
    if name == "grace_hopper":
        import matplotlib.cbook

        return read_image_rgb(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity); the right view overlaps the left
        img = img[0]
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    shrinking = width < img.shape[1] and height < img.shape[0]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(img, (width, height), interpolation=interp)


def _grid_crops(img: np.ndarray, size: int):
    """Non-overlapping size x size crops on a grid centred in ``img``; yields (row, col, crop)."""
    h, w = img.shape[:2]
    rows, cols = h // size, w // size
    y0, x0 = (h - rows * size) // 2, (w - cols * size) // 2
    for r in range(rows):
        for c in range(cols):
            y, x = y0 + r * size, x0 + c * size
            yield r, c, img[y:y + size, x:x + size]


def builtin_crops(size: int):
    """Yield (id, source, split, crop) for the builtin data set at ``size`` px."""
    for name in BUILTIN_IMAGES:
        img = load_builtin(name)
        h, w = img.shape[:2]
        cut = int(round(h * (1 - TEST_BAND)))
        train_part, test_part = img[:cut], img[cut:]
        for k in TRAIN_SCALES:
            th = k * size
            tw = max(size, int(round(train_part.shape[1] * th / train_part.shape[0])))
            for r, c, crop in _grid_crops(_resize(train_part, tw, th), size):
                yield f"{name}_s{k}_r{r}_c{c}", name, "train", crop
        tw = max(size, int(round(test_part.shape[1] * size / test_part.shape[0])))
        for _, c, crop in _grid_crops(_resize(test_part, tw, size), size):
            # column first, so that the first n_test sorted ids spread over all photographs
            yield f"test{c:02d}_{name}", name, "test", crop


def fit_to_size(img: np.ndarray, size: int, policy: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """Bring an RGB image to size x size.

    center_crop: scale the short side to ``size`` then crop the centre; resize: plain bilinear resize
    (OpenCV INTER_LINEAR, as the reference's test loader); random_crop: a seeded random crop (the
    authors' Places2 protocol), upscaling first when the image is smaller than ``size``.
    """
    h, w = img.shape[:2]
    if policy == "resize":
        return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    if policy == "random_crop":
        if min(h, w) < size:
            img = fit_to_size(img, size, "center_crop")
            return img
        y = int(rng.integers(0, h - size + 1))
        x = int(rng.integers(0, w - size + 1))
        return img[y:y + size, x:x + size]
    scale = size / min(h, w)
    nh, nw = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
    img = _resize(img, nw, nh)
    y, x = (nh - size) // 2, (nw - size) // 2
    return img[y:y + size, x:x + size]


def _safe_id(rel: Path) -> str:
    """A file-name-safe, unique-per-path image id: 'sub/dir/img.jpg' -> 'sub__dir__img'."""
    parts = [p for p in rel.with_suffix("").parts if p not in ("..", ".")]
    stem = "__".join(parts)
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem).lstrip(".")


def _read_list(list_path: Path, root: Path) -> list[Path]:
    if not list_path.is_file():
        raise UserError(f"{list_path}: file list not found; fix the dataset's train_list/test_list key")
    rels = []
    root_resolved = root.resolve()
    for line in list_path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        rel = Path(line)
        full = (root / rel).resolve()
        if rel.is_absolute() or not full.is_relative_to(root_resolved):
            raise UserError(f"{list_path}: entry '{line}' points outside the data folder {root}; "
                            "list paths relative to the dataset's path")
        rels.append(rel)
    return rels


def _images_under(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def folder_files(root: Path, seed: int, test_fraction: float, train_list: str = "", test_list: str = "",
                 test_root: Path | None = None):
    """Return [(relative path, split)] for a folder source, sorted by path.

    With ``test_root`` every image under ``root`` is training and every image under ``test_root``
    is test (paths relative to ``root``, so test paths may start with ``..``: they are checked
    against ``test_root`` instead).
    """
    if test_root is not None:
        if not test_root.is_dir():
            raise UserError(f"{test_root}: test folder not found; fix the dataset's 'test_path' key")
        train = folder_files(root, seed, test_fraction)
        test = _images_under(test_root)
        if not test:
            raise UserError(f"{test_root}: no images found; point the dataset's 'test_path' key at a folder of images")
        return [(rel, "train") for rel, _ in train] + [(Path(os.path.relpath(test_root / rel, root)), "test")
                                                       for rel in test]
    if not root.is_dir():
        raise UserError(f"{root}: data folder not found; set the dataset's 'path' key to an existing folder")
    if train_list or test_list:
        items = []
        for list_file, split in ((train_list, "train"), (test_list, "test")):
            if list_file:
                items += [(rel, split) for rel in _read_list(Path(list_file), root)]
        for rel, _ in items:
            if not (root / rel).is_file():
                raise UserError(f"{root / rel}: listed in a file list but missing; fix the list or the folder")
        return sorted(items, key=lambda item: item[0].as_posix())
    files = _images_under(root)
    if not files:
        raise UserError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}); "
                        "point the dataset's 'path' key at a folder of images")
    threshold = int(test_fraction * 10_000)
    return [(rel, "test" if seed_for(seed, "split", rel.as_posix()) % 10_000 < threshold else "train")
            for rel in files]


def _check_n_test(n: int, n_test: int, where: str, test_fraction: float) -> None:
    if n < n_test:
        images = f"{n} image{'' if n == 1 else 's'}"
        raise UserError(f"{where}: the test split has {images} but n_test is {n_test}; set the data set's n_test key "
                        f"to {n} or less, or give it more test images (test_fraction, {test_fraction} now; test_path; "
                        "test_list)")


def prepare(out: Path, source: str, size: int, seed: int, path: str = "", train_list: str = "",
            test_list: str = "", test_fraction: float = 0.1, resize: str = "center_crop",
            skip_bad_files: bool = False, max_train: int = 0, test_path: str = "", n_test: int = 0) -> pd.DataFrame:
    """Prepare the data set into ``out`` (see module docstring). Returns the manifest.

    ``n_test`` (a folder source's): the test images the pairs take per bin; a test split with fewer is a one-line
    error naming both counts, and nothing is written."""
    from strdiffusion.io.files import save_png_atomic

    if size <= 0:
        raise UserError(f"image size must be positive, got {size}; fix config key 'image_size'")
    out = Path(out)
    with atomic_dir(out) as tmp:
        for split in ("train", "test"):
            (tmp / split).mkdir()
        rows = []
        if source == "builtin":
            for image_id, name, split, crop in builtin_crops(size):
                save_png_atomic(tmp / split / f"{image_id}.png", crop)
                rows.append(dict(id=image_id, source=f"builtin:{name}", split=split, width=crop.shape[1],
                                 height=crop.shape[0], status="ok"))
        elif source == "folder":
            root = Path(path)
            files = folder_files(root, seed, test_fraction, train_list, test_list,
                                 Path(test_path) if test_path else None)
            _check_n_test(sum(split == "test" for _, split in files), n_test, path, test_fraction)  # before decoding
            n_train = 0
            seen = set()
            for rel, split in files:
                if split == "train" and max_train and n_train >= max_train:
                    continue
                image_id = _safe_id(rel)
                while image_id in seen:
                    image_id += "_"
                seen.add(image_id)
                try:
                    img = read_image_rgb(root / rel)
                except UndecodableImage as exc:
                    if not skip_bad_files:
                        raise
                    log.warning("skipping %s: cannot decode image (%s); skip_bad_files is set, so it is listed "
                                "as undecodable in the manifest", exc.path, exc.reason)
                    rows.append(dict(id=image_id, source=str(root / rel), split="skipped", width=0, height=0,
                                     status="undecodable"))
                    continue
                h, w = img.shape[:2]
                if min(h, w) < size:
                    log.warning("%s: %dx%d is smaller than %d px; upscaled", root / rel, w, h, size)
                rng = np.random.default_rng(seed_for(seed, "crop", rel.as_posix()))
                crop = fit_to_size(img, size, resize, rng)
                save_png_atomic(tmp / split / f"{image_id}.png", np.ascontiguousarray(crop))
                rows.append(dict(id=image_id, source=str(root / rel), split=split, width=w, height=h, status="ok"))
                n_train += split == "train"
        else:
            raise UserError(f"unknown data source '{source}'; use builtin or folder")
        manifest = pd.DataFrame(rows, columns=["id", "source", "split", "width", "height", "status"])
        for split in ("train", "test"):
            if not (manifest["split"] == split).any():
                raise UserError(f"{path or source}: the {split} split is empty; add images or change the split "
                                "(test_fraction / train_list / test_list)")
        _check_n_test(int(((manifest["split"] == "test") & (manifest["status"] == "ok")).sum()), n_test,
                      path or source, test_fraction)
        write_csv_atomic(manifest, tmp / "manifest.csv")
    counts = manifest[manifest.status == "ok"].split.value_counts().to_dict()
    log.info("prepared %s: %d train, %d test crops at %d px; %d skipped", out, counts.get("train", 0),
             counts.get("test", 0), size, int((manifest.status != "ok").sum()))
    return manifest
