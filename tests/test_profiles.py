"""Cluster/GPU profiles: local-gpu slot assignment with real Snakemake runs, and SLURM dry-runs."""
import os
import shutil
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


@pytest.mark.slow
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


def _stand_in_data(root: Path) -> dict:
    """Tiny stand-in folders for a paper config: a few images and NVIDIA-like masks."""
    import numpy as np
    from PIL import Image

    for sub in ("train", "test", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(root / "train" / f"{i}.png")
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(root / "test" / f"{i}.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "masks" / "00000.png")
    return {"path": str(root / "train"), "test_path": str(root / "test"),
            "masks": {"nvidia_source": str(root / "masks")}}


PAPER = {  # config file, dataset, n_test used in the dry-run (Places2 reduced: its full DAG is counted by test_docs)
    "psv": ("paris_streetview", None),
    "celebahq": ("celebahq", None),
    "places2": ("places2", 2000),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER))
def test_slurm_dryrun_paper_config(tmp_path, repo_root, name):
    import math

    import yaml

    dataset, n_test = PAPER[name]
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(repo_root / "Snakefile", work / "Snakefile")
    shutil.copytree(repo_root / "workflow", work / "workflow")
    shutil.copytree(repo_root / "config", work / "config")
    override = _stand_in_data(tmp_path / "data")
    if name == "celebahq":
        override.pop("test_path")
        (tmp_path / "train.flist").write_text("0.png\n1.png\n")
        (tmp_path / "test.flist").write_text("2.png\n")
        override.update(train_list=str(tmp_path / "train.flist"), test_list=str(tmp_path / "test.flist"))
    if n_test:
        override["n_test"] = n_test
    (work / "local.yaml").write_text(yaml.safe_dump({"datasets": {dataset: override}}))
    env = _env()
    res = subprocess.run([SNAKEMAKE, "-n", "--profile", str(repo_root / "profiles" / "slurm"), "--configfile",
                          f"config/paper/{name}.yaml", "local.yaml"], cwd=work, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    stats = out[out.index("Job stats:"):].splitlines()
    counts = {line.split()[0]: int(line.split()[1]) for line in stats[3:] if len(line.split()) == 2
              and line.split()[1].isdigit()}
    cfg = yaml.safe_load((repo_root / "config" / "paper" / f"{name}.yaml").read_text())
    ds = cfg["datasets"][dataset]
    shards = math.ceil((n_test or ds["n_test"]) / cfg["sampling"]["shard_size"])
    bins, methods = len(ds["masks"]["bins"]), len(cfg["methods"])
    assert counts["inpaint_shard"] == shards * bins * methods
    assert counts["image_metrics"] == counts["set_metrics"] == bins * methods
    for rule in ("train_structure", "train_texture", "train_critic", "train_irsde", "prepare_data", "table"):
        assert counts[rule] == 1, rule
    # GPU requests reach the training and inpainting jobs (SLURM partition and gpu resource)
    jobs = out.split("\nrule ")[1:]
    for rule in ("inpaint_shard", "train_texture", "train_structure"):
        block = next(j for j in jobs if j.startswith(rule))
        resources = next(line for line in block.splitlines() if "resources:" in line)
        assert "gpu=1" in resources and "slurm_partition=CHANGE_ME_gpu_partition" in resources, resources
    block = next(j for j in jobs if j.startswith("table"))
    assert "gpu=0" in next(line for line in block.splitlines() if "resources:" in line)


@pytest.mark.slow
def test_dryrun_authors_checkpoints_remove_training(tmp_path, repo_root):
    import yaml

    work = tmp_path / "work"
    work.mkdir()
    for item in ("Snakefile",):
        shutil.copy(repo_root / item, work / item)
    shutil.copytree(repo_root / "workflow", work / "workflow")
    shutil.copytree(repo_root / "config", work / "config")
    override = _stand_in_data(tmp_path / "data")
    ck = tmp_path / "ck"
    ck.mkdir()
    paths = {}
    for net, fname in (("structure", "structure.pth"), ("texture", "texture.pth"), ("critic", "discriminator.pth")):
        (ck / fname).write_bytes(b"stand-in")
        paths[net] = str(ck / fname)
    (work / "local.yaml").write_text(yaml.safe_dump({"datasets": {"paris_streetview": override}, "checkpoints": paths}))
    res = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--configfile", "config/paper/psv.yaml",
                          "config/paper/authors_psv.yaml", "local.yaml"], cwd=work, env=_env(), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "inpaint_shard" in out and "train_" not in out
