"""Cluster/GPU profiles: local-gpu slot assignment with real Snakemake runs, and SLURM dry-runs."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from strdiffusion.runtime import gpu as gpu
from strdiffusion.settings.config import read_layer

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
    code = "from strdiffusion.runtime import gpu; print(gpu.claim(1, timeout=2))"
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
    profile = tmp_path / "profile"  # the shipped profile with its placeholders filled in, as a user's
    profile.mkdir()
    text = (repo_root / "profiles" / "slurm" / "config.yaml").read_text()
    for placeholder, value in (("CHANGE_ME_cpu_partition", "cpu"), ("CHANGE_ME_gpu_partition", "gpu"),
                               ("CHANGE_ME_account", "")):
        text = text.replace(placeholder, value)
    (profile / "config.yaml").write_text(text)
    res = subprocess.run([SNAKEMAKE, "-n", "--profile", str(profile), "--configfile",
                          f"config/paper/{name}.yaml", "local.yaml"], cwd=work, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    stats = out[out.index("Job stats:"):].splitlines()
    counts = {line.split()[0]: int(line.split()[1]) for line in stats[3:] if len(line.split()) == 2
              and line.split()[1].isdigit()}
    cfg = read_layer(repo_root / "config" / "paper" / f"{name}.yaml")  # with common.yaml
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
        assert "gpu=1" in resources and "slurm_partition=gpu" in resources, resources
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


# ---------------------------------------------------------------------- GPU slots of the real workflow rules

GPU_TINY = {
    "seed": 0, "image_size": 32,
    "datasets": {"builtin": {"source": "builtin", "n_test": 4, "masks": {
        "protocol": "lama_medium", "bins": [[0.1, 0.2], [0.3, 0.4]], "per_bin": 4, "train_pool": 16}}},
    "methods": ["strdiffusion", "irsde"],
    "metrics": {"per_image": ["psnr"], "per_set": [], "fetch_weights": False},
    "checkpoints": {"structure": "", "texture": "", "critic": "", "irsde": ""},
    "model": {"nf": 4, "depth": 2, "critic_ngf": 4},
    "sde": {"T": 4},
    "train": {"iterations": 2, "batch_size": 2, "checkpoint_every": 2, "val_count": 0},
    "sampling": {"shard_size": 2, "batch_size": 2, "u_max": 2, "u_min": 2, "jump": 2, "re": 1},
}
NETS = ("structure", "texture", "critic", "irsde")
MODELS = [f"results/builtin/models/{net}.pt" for net in NETS]
SHARDS = [f"results/builtin/inpaint/{m}/{b}/shard_{s}" for m in ("strdiffusion", "irsde") for b in ("10-20", "30-40")
          for s in (0, 1)]


def _stand_in_nvidia_smi(folder: Path, n: int) -> Path:
    """An `nvidia-smi` that lists ``n`` GPUs as `nvidia-smi -L` does (no GPU exists: torch stays on the CPU)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(f'echo "GPU {i}: Stand-in GPU (UUID: GPU-{i:08d})"\n' for i in range(n))
    (folder / "nvidia-smi").write_text(f"#!/bin/sh\n{lines}")
    (folder / "nvidia-smi").chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def gpu_workdir(tmp_path_factory, repo_root):
    """The tiny workflow with its data, structure and masks made (no GPU rules yet), copied by each test."""
    import yaml

    work = tmp_path_factory.mktemp("gpu_slots") / "work"
    work.mkdir()
    shutil.copy(repo_root / "Snakefile", work / "Snakefile")
    for item in ("workflow", "config"):
        shutil.copytree(repo_root / item, work / item)
    (work / "tiny.yaml").write_text(yaml.safe_dump(GPU_TINY))
    targets = ["results/builtin/data/train", "results/builtin/structure/train", "results/builtin/masks/pool",
               "results/builtin/masks/pairs.csv", "results/builtin/data/test", "results/builtin/structure/test"]
    res = subprocess.run([SNAKEMAKE, *targets, "--cores", "2", "--configfile", "tiny.yaml"], cwd=work,
                         env=_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return work


def _gpu_run(gpu_workdir, tmp_path, n_gpus, targets, *options, profile=True):
    work = tmp_path / "work"
    shutil.copytree(gpu_workdir, work, symlinks=True)
    env = _env(PATH=f"{_stand_in_nvidia_smi(tmp_path / 'bin', n_gpus)}{os.pathsep}{_env()['PATH']}",
               STRDIFFUSION_GPU_LOCK_DIR=str(tmp_path / "locks"), OMP_NUM_THREADS="1")
    env.pop("STRDIFFUSION_GPU_POOL", None)
    prof = ["--profile", str(Path(__file__).resolve().parents[2] / "profiles" / "local-gpu")] if profile else []
    res = subprocess.run([SNAKEMAKE, *targets, *prof, *options, "--cores", "32", "--configfile", "tiny.yaml"], cwd=work,
                         env=env,
                         capture_output=True, text=True, timeout=900)
    return work, res


def _held(log: Path) -> tuple[set[str], float, float]:
    """The GPUs a job held, from its log: (slots, from when, until when the log was last written)."""
    lines = [line for line in log.read_text().splitlines() if line.startswith("GPU slot(s) ")]
    assert len(lines) == 1, (log, lines)
    slots, since = lines[0].split()[2], float(lines[0].split()[5])
    assert lines[0].endswith(f"(CUDA_VISIBLE_DEVICES={slots})")
    return set(slots.split(",")), since, log.stat().st_mtime


@pytest.mark.slow
@pytest.mark.xdist_group("gpu_slots")  # one worker makes the shared folder
def test_gpu_slots_four_trainings_and_parallel_inpainting_hold_distinct_gpus(gpu_workdir, tmp_path):
    """profiles/local-gpu on a machine listing five GPUs, the structure training asking for two: the four training
    jobs run at once on distinct GPUs (the structure network with DDP on its two), inpainting jobs that run side by
    side hold distinct GPUs, and no two overlapping jobs share one."""
    work, res = _gpu_run(gpu_workdir, tmp_path, 5, [*MODELS, *SHARDS], "--set-resources", "train_structure:gpu=2")
    assert res.returncode == 0, res.stderr[-3000:]
    logs = {f"train_{net}": work / "logs" / "builtin" / f"train_{net}.log" for net in NETS}
    for shard in SHARDS:  # results/builtin/inpaint/<method>/<bin>/shard_<i> -> logs/.../<method>_<bin>_<i>.log
        method, bin_, i = shard.split("/")[3:]
        logs[f"inpaint {shard}"] = work / "logs" / "builtin" / "inpaint" / f"{method}_{bin_}_{i[6:]}.log"
    held = {job: _held(log) for job, log in logs.items()}
    trainings = [held[f"train_{net}"][0] for net in NETS]
    assert set().union(*trainings) == {"0", "1", "2", "3", "4"}, trainings
    assert [len(s) for s in trainings] == [2, 1, 1, 1], trainings  # NETS[0] is the structure network
    overlapping = 0
    jobs = sorted(held)
    for i, a in enumerate(jobs):
        for b in jobs[i + 1:]:
            (sa, a0, a1), (sb, b0, b1) = held[a], held[b]
            if a0 < b1 and b0 < a1:
                assert not sa & sb, (a, b, held[a], held[b])
                overlapping += a.startswith("inpaint") and b.startswith("inpaint")
    assert overlapping >= 1  # inpainting ran in parallel
    # the two-GPU training ran as two DDP processes
    assert "--nproc 2" in res.stdout + res.stderr
    assert "2 process(es), batch 1 per process, effective batch 2" in logs["train_structure"].read_text()


@pytest.mark.slow
@pytest.mark.xdist_group("gpu_slots")  # one worker makes the shared folder
def test_gpu_slots_rule_asking_for_a_gpu_without_a_pool_stops_with_one_line(gpu_workdir, tmp_path):
    work, res = _gpu_run(gpu_workdir, tmp_path, 0, MODELS[:1])
    assert res.returncode != 0
    text = (work / "logs" / "builtin" / "train_structure.log").read_text()
    errors = [line for line in text.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: this job asks for 1 GPU slot(s)"), text
    assert "no GPU pool was found" in errors[0] and "Traceback" not in text
    assert not (work / MODELS[0]).exists()


@pytest.mark.slow
@pytest.mark.xdist_group("gpu_slots")  # one worker makes the shared folder
def test_gpu_slots_without_a_profile_run_no_more_gpu_jobs_than_gpus(gpu_workdir, tmp_path):
    """No profile on a machine listing two GPUs: Snakemake's gpu resource defaults to 2, each GPU rule asks for
    one, so at most two of the four trainings run at any time (Snakemake's own job log), on distinct GPUs."""
    work, res = _gpu_run(gpu_workdir, tmp_path, 2, MODELS, profile=False)
    assert res.returncode == 0, res.stderr[-3000:]
    running, most = set(), 0
    for line in res.stderr.splitlines():
        line = line.strip()
        if line.startswith(("rule train_", "localrule train_")):
            running.add(line.split()[1].rstrip(":"))
        elif line.startswith("Finished jobid") and "train_" in line:
            running.discard(line.split("Rule: ")[1].rstrip(")"))
        most = max(most, len(running))
    assert most == 2, res.stderr[-3000:]
    held = [_held(work / "logs" / "builtin" / f"train_{net}.log") for net in NETS]
    assert {s for h in held for s in h[0]} == {"0", "1"}


def test_gpu_slots_pool_from_nvidia_smi_with_mig_instances(tmp_path, monkeypatch):
    """Whole GPUs are slots by index; a GPU split into MIG instances gives one slot per instance UUID."""
    listing = ("GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-aaaa)\n"
               "GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-bbbb)\n"
               "  MIG 3g.20gb     Device  0: (UUID: MIG-1111)\n"
               "  MIG 3g.20gb     Device  1: (UUID: MIG-2222)\n"
               "GPU 2: NVIDIA A100-SXM4-40GB (UUID: GPU-cccc)\n")
    (tmp_path / "nvidia-smi").write_text(f"#!/bin/sh\ncat <<'END'\n{listing}END\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.delenv("STRDIFFUSION_GPU_POOL", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert gpu.pool() == ["0", "MIG-1111", "MIG-2222", "2"]
    monkeypatch.setenv("STRDIFFUSION_GPU_POOL", "3, 5")
    assert gpu.pool() == ["3", "5"]


def test_gpu_slots_claim_without_a_pool_is_one_line_user_error(tmp_path, monkeypatch):
    from strdiffusion.io.errors import UserError

    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.delenv("STRDIFFUSION_GPU_POOL", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert gpu.claim(0) == []
    with pytest.raises(UserError, match="no GPU pool was found"):
        gpu.claim(1)
    monkeypatch.setenv("STRDIFFUSION_GPU_POOL", "0")
    with pytest.raises(UserError, match="asks for 2 GPUs but the pool has 1"):
        gpu.claim(2)


def test_gpu_slots_fixed_device_with_several_processes_is_refused():
    from strdiffusion.io.errors import UserError

    gpu.check_rank_device("cuda", 2)
    gpu.check_rank_device("cuda:1", 1)
    with pytest.raises(UserError, match="puts every process on one GPU"):
        gpu.check_rank_device("cuda:0", 2)
