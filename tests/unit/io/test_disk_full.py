"""Disk full (ENOSPC) is one line, `error: <path>: disk full (...); free space and re-run`, and leaves
nothing partial. A real tiny tmpfs is mounted, so these tests need root (skipped otherwise)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture()
def tiny_disk(tmp_path):
    where = tmp_path / "tiny"
    where.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)  # lazy: a writer may still hold a file


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "strdiffusion", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def _one_line(res, path: Path) -> str:
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(err) >= 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    line = err[-1]
    assert line == f"error: {path}: disk full (No space left on device); free space and re-run"
    return line


def test_disk_full_data_and_masks_stages_one_line_nothing_left(tiny_disk):
    res = _cli("data", "--source", "builtin", "--size", 64, "--seed", 0, "--out", tiny_disk / "data")
    _one_line(res, tiny_disk / "data")
    assert list(tiny_disk.iterdir()) == []
    res = _cli("masks", "generate", "--protocol", "lama_medium", "--size", 256, "--bins", "0.1:0.2", "--count", 200,
               "--seed", 0, "--out", tiny_disk / "masks")
    _one_line(res, tiny_disk / "masks")
    assert list(tiny_disk.iterdir()) == []


def test_disk_full_checkpoint_and_csv_helpers(tiny_disk):
    import numpy as np
    import pandas as pd
    import torch

    from strdiffusion.io.errors import DiskFullError
    from strdiffusion.io.files import atomic_path, write_csv_atomic

    with pytest.raises(DiskFullError) as info:   # torch.save reports ENOSPC as a RuntimeError
        with atomic_path(tiny_disk / "net.pt") as tmp:
            torch.save({"w": torch.zeros(512, 512)}, tmp)
    assert str(info.value).startswith(f"{tiny_disk / 'net.pt'}: disk full")
    with pytest.raises(DiskFullError, match="free space and re-run"):
        write_csv_atomic(pd.DataFrame({"x": np.arange(200_000)}), tiny_disk / "big.csv")
    assert list(tiny_disk.iterdir()) == []


def test_disk_full_weights_fetch_leaves_nothing(tiny_disk, tmp_path):
    import hashlib

    payload = os.urandom(600_000)
    src = tmp_path / f"standin-{hashlib.sha256(payload).hexdigest()[:8]}.pth"
    src.write_bytes(payload)
    dest = tiny_disk / "alex.pth"
    res = _cli("weights", "fetch", "--only", "alexnet", "--alexnet-url", src.as_uri(), "--alexnet-weights", dest)
    _one_line(res, dest)
    assert list(tiny_disk.iterdir()) == []


def test_atomic_outputs_get_the_usual_permissions(tmp_path):
    """mkstemp and mkdtemp create private files (0600, 0700); an output must read like any other file."""
    from strdiffusion.io.files import atomic_dir, atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "table.csv") as tmp:
            tmp.write_text("x\n")
        with atomic_dir(tmp_path / "masks") as tmp:
            (tmp / "a.png").write_bytes(b"")
    finally:
        os.umask(old)
    assert (tmp_path / "table.csv").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "masks").stat().st_mode & 0o777 == 0o755
