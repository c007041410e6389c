"""Training test helpers: a tiny synthetic training set, the train stage's command line, weight comparison."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from strdiffusion.data.structure import image_structure, save_gray
from strdiffusion.io.files import save_png_atomic

SIZE = 16
T = 10


def make_data(root: Path, n_images: int = 4, n_masks: int = 3, size: int = SIZE) -> dict:
    """Tiny synthetic training set: smooth colour patterns, their gray/edge maps, box masks (white = hole)."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n_images):
        img = np.stack([128 + 100 * np.sin(xx / (2 + i)), (yy * (5 + i)) % 256, ((xx + yy + i) % 8 > 3) * 200 + 20], -1)
        img = img.astype(np.uint8)
        save_png_atomic(root / "images" / f"{i:03d}.png", img)
        gray, edge = image_structure(img, 1.0)
        save_gray(root / "structure" / "gray" / f"{i:03d}.png", gray)
        save_png_atomic(root / "structure" / "edge" / f"{i:03d}.png", (edge * 255).astype(np.uint8))
    for j in range(n_masks):
        m = np.zeros((size, size), np.uint8)
        a, b = rng.integers(0, size // 2, 2)
        m[a:a + size // 2, b:b + size // 3] = 255
        save_png_atomic(root / "masks" / f"{j}.png", m)
    return {"images": root / "images", "structure": root / "structure", "masks": root / "masks"}


def cli_args(data: dict, out: Path, state: Path, net: str, iterations: int, **extra) -> list[str]:
    opts = {"nf": 8, "depth": 2, "critic-ngf": 4, "T": T, "batch-size": 4, "lr": 1e-3, "ema": 0.9,
            "checkpoint-every": 2, "threads": 1, "seed": 3, "milestones": "0.5", "device": "cpu"}
    opts.update({k.replace("_", "-"): v for k, v in extra.items()})
    args = ["--net", net, "--images", str(data["images"]), "--structure", str(data["structure"]),
            "--masks", str(data["masks"]), "--out", str(out), "--state-dir", str(state),
            "--iterations", str(iterations)]
    for k, v in opts.items():
        args += [f"--{k}", str(v)]
    return args


def env_cpu() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return env


def assert_same_weights(a: Path, b: Path) -> None:
    sa = torch.load(a, weights_only=True)["state_dict"]
    sb = torch.load(b, weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


class ZeroUNet(nn.Module):
    """Predicts zero noise; records what it was called with."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, xt, cond, time, guidance=None):
        self.calls.append({"xt": xt, "cond": cond, "time": time, "guidance": guidance})
        return torch.zeros_like(xt)


def random_batch(B=3, size=8, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(B, 3, size, size, generator=g)
    return {"image": image, "gray": image.mean(1, keepdim=True),
            "edge": (torch.rand(B, 1, size, size, generator=g) > 0.8).float(),
            "mask": (torch.rand(B, 1, size, size, generator=g) > 0.4).float(),
            "t": torch.tensor([2, 5, T])[:B], "noise": torch.randn(B, 3, size, size, generator=g),
            "noise_s": torch.randn(B, 1, size, size, generator=g)}
