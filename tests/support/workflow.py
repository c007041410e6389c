"""Workflow test helpers: the tiny config, a work folder holding a copy of the workflow, a Snakemake run."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


# The tiny config of the workflow catalog's convention: every stage, the four networks trained from scratch,
# all seven methods; an overlay on config/config.yaml (its `extends` is for `snakemake --directory .test`).
TINY_CONFIG = Path(__file__).resolve().parents[2] / ".test" / "config" / "config.yaml"


TINY = {key: value for key, value in yaml.safe_load(TINY_CONFIG.read_text()).items() if key != "extends"}


def make_workdir(path: Path, repo: Path, config: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(repo / "Snakefile", path / "Snakefile")
    shutil.copytree(repo / "workflow", path / "workflow")
    shutil.copytree(repo / "config", path / "config")
    (path / "tiny.yaml").write_text(yaml.safe_dump(config))
    return path


def filled_profile(path: Path, repo: Path, cpu="cpu", gpu="gpu", account="") -> Path:
    """A copy of profiles/slurm with its CHANGE_ME placeholders filled, as a user fills them before a run."""
    text = (repo / "profiles" / "slurm" / "config.yaml").read_text()
    for placeholder, value in (("CHANGE_ME_cpu_partition", cpu), ("CHANGE_ME_gpu_partition", gpu),
                               ("CHANGE_ME_account", account)):
        text = text.replace(placeholder, value)
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(text)
    return path


def snakemake(workdir: Path, *args, torch_home: Path, check=True, timeout=900):
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["TORCH_HOME"] = str(torch_home)  # empty: metric weights are missing, as offline
    env["OMP_NUM_THREADS"] = "1"
    # targets and options first: --configfile takes every word after it
    res = subprocess.run([SNAKEMAKE, *args, "--cores", "2", "--configfile", "tiny.yaml"], cwd=workdir, env=env,
                         capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-1500:]}" for p in sorted((workdir / "logs").rglob("*.log"))[-5:]) \
            if (workdir / "logs").exists() else ""
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{res.stderr[-3000:]}\n{logs}")
    return res
