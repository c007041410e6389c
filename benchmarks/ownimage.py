"""Own photos at any size (section ``ownimage``, off unless named): time and peak memory of the README's command.

``strdiffusion inpaint --method strdiffusion --checkpoints checkpoints/laptop --image P --mask M --out O`` on a
photograph (scikit-image's coffee, resized) of each size with one rectangular hole of the same share of the image
(200 x 150 px at 1,600 x 1,200). Each run is its own process, timed from start to exit (Python and torch
start-up, reading, the window's sampling at the networks' trained size, writing the PNG); its peak RSS is the
process's own, from ``os.wait4``. The CLI's sampling defaults, torch's default threads.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import REPO, TARGETS, loadavg

TITLE = "own photos: a window around the hole at the networks' trained size"
SIZES = ((1600, 1200), (4000, 3000))  # width, height
HOLE = (200, 150)  # at 1,600 x 1,200; scaled with the image


def _inputs(folder: Path, width: int, height: int) -> tuple[Path, Path]:
    import cv2
    import numpy as np
    import skimage.data
    from PIL import Image

    photo = cv2.resize(skimage.data.coffee(), (width, height), interpolation=cv2.INTER_CUBIC)
    hole_w, hole_h = HOLE[0] * width // SIZES[0][0], HOLE[1] * height // SIZES[0][1]
    hole = np.zeros((height, width), np.uint8)
    y, x = int(height * 0.7), int(width * 0.625)
    hole[y:y + hole_h, x:x + hole_w] = 255
    image, mask = folder / f"photo_{width}x{height}.png", folder / f"hole_{width}x{height}.png"
    Image.fromarray(photo).save(image)
    Image.fromarray(hole).save(mask)
    return image, mask


def bench_one(folder: Path, width: int, height: int) -> dict:
    image, mask = _inputs(folder, width, height)
    out = folder / f"filled_{width}x{height}.png"
    cmd = [sys.executable, "-m", "strdiffusion", "inpaint", "--method", "strdiffusion", "--checkpoints",
           str(REPO / "checkpoints" / "laptop"), "--image", str(image), "--mask", str(mask), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    load = loadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        log = err.read().decode(errors="replace")
    windows = [line.split("INFO: ", 1)[-1] for line in log.splitlines() if "window(s)" in line]
    row = {"width": width, "height": height, "hole": [HOLE[0] * width // SIZES[0][0], HOLE[1] * height // SIZES[0][1]],
           "seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
           "returncode": proc.returncode, "windows": windows, "loadavg_before": load, "loadavg_after": loadavg()}
    if proc.returncode != 0:
        row["stderr_tail"] = log[-2000:]
    return row


def run(args, result: dict) -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="strdiffusion-ownimage-") as tmp:
        for width, height in SIZES:
            row = bench_one(Path(tmp), width, height)
            rows.append(row)
            limit_s, limit_mb = TARGETS["own_image_seconds"], TARGETS["own_image_peak_mb"]
            ok = row["returncode"] == 0 and row["seconds"] <= limit_s and row["peak_rss_mb"] <= limit_mb
            print(f"  {width}x{height}, hole {row['hole'][0]}x{row['hole'][1]}: {row['seconds']:.1f} s, peak RSS "
                  f"{row['peak_rss_mb']:.0f} MB, exit {row['returncode']} (targets <= {limit_s:.0f} s, "
                  f"<= {limit_mb:.0f} MB: {'met' if ok else 'NOT met'})  load "
                  f"{row['loadavg_before'][0]:.1f} -> {row['loadavg_after'][0]:.1f}; "
                  f"{'; '.join(row['windows']) or row.get('stderr_tail', '')}", flush=True)
    result["ownimage"] = rows
