"""Training data: seeded, stateless batches of crops, structure maps, masks, timesteps and noise.

Item p of a run is a pure function of (seed, network kind, p), so the data order needs no state, a
resumed run sees exactly the batches of an uninterrupted one, and DDP ranks take strided slices of the
same global batches. Tensors are float32 CHW; ``mask`` is 1 on KNOWN pixels (mask FILES are white = hole).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from strdiffusion.core.seeds import seed_for
from strdiffusion.io.errors import UserError
from strdiffusion.io.images import read_image_rgb, read_mask

log = logging.getLogger("strdiffusion.training.trainer")

# Data sets with more training images than this are read from disk per item instead of held in memory.
IN_MEMORY_LIMIT = 4000


class TrainingSet(torch.utils.data.Dataset):
    """Training items addressed by global position p = iteration * batch_size + slot.

    Item p draws, from a generator seeded by (seed, kind, p): a random crop of ``size``, a random
    horizontal flip, vertical flip and transpose (the dihedral augmentation of the reference, applied
    identically to image, gray and edge), a random horizontal flip of the mask, the timestep
    t in {t_min..T} and the Gaussian noises. Images and masks are visited in seeded per-epoch
    permutations (independent for images and masks, so the pairing is random).

    Returned tensors (float32, CHW): image (3, [0,1]), gray (1), edge (1, 0/1), mask (1, 1 = known),
    noise (3), noise_s (1); t (int64 scalar).
    """

    def __init__(self, image_files, gray_files, edge_files, masks, size: int, T: int, seed: int, kind: str,
                 in_memory: bool = True, t_min: int = 2):
        self.image_files, self.gray_files, self.edge_files = list(image_files), list(gray_files), list(edge_files)
        self.masks = masks  # list of float32 HxW arrays (1 = known), already at ``size``
        self.size, self.T, self.seed, self.kind, self.t_min = size, T, seed, kind, t_min
        self.cache = [self.read(i) for i in range(len(self.image_files))] if in_memory else None
        self._perms: dict = {}

    def __len__(self) -> int:
        return len(self.image_files)

    def read(self, i: int):
        from strdiffusion.data.structure import load_gray

        image = read_image_rgb(self.image_files[i]).astype(np.float32) / np.float32(255)
        gray = load_gray(self.gray_files[i]).astype(np.float32)
        edge = read_image_rgb(self.edge_files[i])[..., 0] > 127
        if gray.shape != image.shape[:2] or edge.shape != image.shape[:2]:
            raise UserError(f"{self.gray_files[i]} / {self.edge_files[i]}: structure maps are not the size of "
                            f"{self.image_files[i]}; re-run the structure stage")
        if min(image.shape[:2]) < self.size:
            raise UserError(f"{self.image_files[i]} is {image.shape[1]}x{image.shape[0]}, smaller than the "
                            f"working size {self.size}")
        return image, gray, edge.astype(np.float32)

    def _index(self, what: str, n: int, p: int) -> int:
        epoch, pos = divmod(p, n)
        key = (what, epoch)
        if key not in self._perms:
            if len(self._perms) > 8:
                self._perms.clear()
            g = torch.Generator().manual_seed(seed_for(self.seed, self.kind, what, epoch))
            self._perms[key] = torch.randperm(n, generator=g)
        return int(self._perms[key][pos])

    def __getitem__(self, p: int) -> dict:
        g = torch.Generator().manual_seed(seed_for(self.seed, self.kind, "item", p))
        i = self._index("images", len(self.image_files), p)
        image, gray, edge = self.cache[i] if self.cache is not None else self.read(i)
        mask = self.masks[self._index("masks", len(self.masks), p)]
        s = self.size
        H, W = gray.shape
        top = int(torch.randint(0, H - s + 1, (1,), generator=g))
        left = int(torch.randint(0, W - s + 1, (1,), generator=g))
        hflip, vflip, transpose, mflip = (torch.rand(4, generator=g) < 0.5).tolist()
        img = torch.from_numpy(np.ascontiguousarray(image[top:top + s, left:left + s])).permute(2, 0, 1)
        structure = torch.from_numpy(np.stack([gray[top:top + s, left:left + s], edge[top:top + s, left:left + s]]))
        both = torch.cat([img, structure])
        if hflip:
            both = both.flip(-1)
        if vflip:
            both = both.flip(-2)
        if transpose:
            both = both.transpose(-1, -2)
        m = torch.from_numpy(mask)[None]
        if mflip:
            m = m.flip(-1)
        t = torch.randint(self.t_min, self.T + 1, (), generator=g)
        noise = torch.randn((3, s, s), generator=g)
        noise_s = torch.randn((1, s, s), generator=g)
        return {"image": both[:3].contiguous(), "gray": both[3:4].contiguous(), "edge": both[4:5].contiguous(),
                "mask": m.contiguous(), "t": t, "noise": noise, "noise_s": noise_s}


class IterationBatches(torch.utils.data.Sampler):
    """Batches of global positions for iterations start+1 .. stop; rank r gets positions r, r + W, r + 2W, ...
    of each (W processes). Strided like the critic's minibatch-stddev groups (sample b in group b % (B // 4)):
    a rank's groups of 4 are then the groups one process would form from the global batch."""

    def __init__(self, start: int, stop: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.start, self.stop, self.batch_size = start, stop, batch_size
        self.per_rank = batch_size // world_size
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        for it in range(self.start, self.stop):  # iteration it + 1 (1-based) uses global block it
            base = it * self.batch_size + self.rank
            yield list(range(base, base + self.per_rank * self.world_size, self.world_size))


def _pngs(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"{what} folder {folder} does not exist")
    files = sorted(folder.glob("*.png"))
    if not files:
        raise UserError(f"{what} folder {folder} has no PNG files")
    return files


def load_masks(folder: Path, size: int) -> list[np.ndarray]:
    """Every mask PNG in ``folder`` as float32 size x size (1 = known); other sizes are resized NEAREST."""
    from PIL import Image

    masks = []
    for f in _pngs(folder, "mask"):
        m = read_mask(f)
        if m.shape != (size, size):
            m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 127
            m = m.astype(np.float32)
        masks.append(m)
    return masks


def validation_indices(n_images: int, count: int) -> list[int]:
    """Evenly spaced held-out training images for the learning curves; none if the set is too small."""
    if count <= 0 or n_images < 4 * count:
        return []
    return sorted({int(round(v)) for v in np.linspace(0, n_images - 1, count)})


def build_dataset(images: Path, structure: Path, masks: Path, size: int, T: int, seed: int, kind: str,
                  t_min: int = 2, val_count: int = 0) -> tuple[TrainingSet, TrainingSet | None]:
    """The training set and the held-out validation set (None when ``val_count`` is 0 or too large)."""
    image_files = _pngs(images, "training image")
    gray_files = [structure / "gray" / f.name for f in image_files]
    edge_files = [structure / "edge" / f.name for f in image_files]
    missing = [str(p) for p in gray_files + edge_files if not p.is_file()]
    if missing:
        raise UserError(f"structure maps missing for {len(missing)} training images (e.g. {missing[0]}); "
                        f"run the structure stage on {images}")
    if size <= 0:
        from PIL import Image

        with Image.open(image_files[0]) as im:
            size = min(im.size)
    held = set(validation_indices(len(image_files), val_count))
    if val_count > 0 and not held:
        log.warning("only %d training images: no validation images held out (--val-count %d), no learning curve",
                    len(image_files), val_count)
    pool = load_masks(masks, size)

    def subset(keep):
        idx = [i for i in range(len(image_files)) if keep(i)]
        files = [[files[i] for i in idx] for files in (image_files, gray_files, edge_files)]
        return TrainingSet(*files, pool, size, T, seed, kind, in_memory=len(idx) <= IN_MEMORY_LIMIT, t_min=t_min)

    train_set = subset(lambda i: i not in held)
    return train_set, (subset(lambda i: i in held) if held else None)
