"""Wall time of the embedded default workflow from empty results (section ``workflow``, off unless named)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import REPO, TARGETS, loadavg

TITLE = "workflow"


def bench_workflow(timeout_s: int = 3600) -> dict:
    """Wall time of ``snakemake --cores all`` on the repository's default config in a temporary copy."""
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    with tempfile.TemporaryDirectory(prefix="strdiffusion-wf-") as tmp:
        work = Path(tmp) / "run"
        work.mkdir()
        shutil.copy(REPO / "Snakefile", work / "Snakefile")
        for folder in ("workflow", "config", "checkpoints"):  # checkpoints: the shipped nets the default samples
            shutil.copytree(REPO / folder, work / folder)
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["TORCH_HOME"] = str(Path(tmp) / "torch_home")  # empty, as offline: no metric weights
        load = loadavg()
        t0 = time.perf_counter()
        try:
            res = subprocess.run([snakemake, "--cores", "all"], cwd=work, env=env, capture_output=True, text=True,
                                 timeout=timeout_s)
            rc, tail = res.returncode, res.stderr[-2000:]
        except subprocess.TimeoutExpired:
            rc, tail = None, f"timed out after {timeout_s} s"
        seconds = time.perf_counter() - t0
    row = {"seconds": seconds, "returncode": rc, "loadavg_before": load, "loadavg_after": loadavg(),
           "target_s": TARGETS["workflow_seconds"], "meets_target": rc == 0 and seconds <= TARGETS["workflow_seconds"]}
    if rc != 0:
        row["stderr_tail"] = tail
    print(f"  workflow (default config, empty results/): {seconds:.0f} s, exit {rc}"
          f" (target <= {TARGETS['workflow_seconds']:.0f} s)  load {load[0]:.1f}", flush=True)
    return row


def run(args, result: dict) -> None:
    result["workflow"] = bench_workflow(args.workflow_timeout)
