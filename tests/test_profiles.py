"""Cluster/GPU profiles: local-gpu slot assignment with real Snakemake runs, and SLURM dry-runs."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from strdiffusion import gpu

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def _env(**extra):
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update(extra)
    return env


def test_local_gpu_profile_gives_parallel_jobs_different_gpus(tmp_path, repo_root):
    """Two GPU jobs run at once under profiles/local-gpu and each sees its own CUDA_VISIBLE_DEVICES."""
    (tmp_path / "Snakefile").write_text(
        'rule all:\n    input: expand("out/{i}.txt", i=range(2))\n\n'
        "rule job:\n    output: 'out/{i}.txt'\n    resources: gpu=1\n"
        "    shell: 'STRDIFFUSION_JOB_GPUS={resources.gpu} python -m strdiffusion env --hold 4 > {output}'\n")
    env = _env(STRDIFFUSION_GPU_POOL="0,1", STRDIFFUSION_GPU_LOCK_DIR=str(tmp_path / "locks"))
    res = subprocess.run([SNAKEMAKE, "--profile", str(repo_root / "profiles" / "local-gpu"), "--resources", "gpu=2",
                          "--cores", "2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    seen = [next(line for line in (tmp_path / "out" / f"{i}.txt").read_text().splitlines()
                 if line.startswith("CUDA_VISIBLE_DEVICES=")) for i in range(2)]
    assert sorted(seen) == ["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"]


def test_gpu_claim_respects_existing_assignment_and_frees_on_exit(tmp_path, monkeypatch):
    monkeypatch.setenv("STRDIFFUSION_GPU_POOL", "3")
    monkeypatch.setenv("STRDIFFUSION_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    assert gpu.claim(1) == []  # SLURM already assigned a GPU
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    code = "from strdiffusion import gpu; print(gpu.claim(1, timeout=2))"
    env = _env(STRDIFFUSION_GPU_POOL="3", STRDIFFUSION_GPU_LOCK_DIR=str(tmp_path))
    for _ in range(2):  # the slot is free again once the first process has exited
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "['3']"
