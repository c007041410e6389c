"""GPU slots for several GPU jobs on one machine (profiles/local-gpu).

Snakemake limits how many GPU jobs run at once (``--resources gpu=N``) but does not say WHICH
GPU a job gets. A job whose rule requests GPUs runs as ``STRDIFFUSION_JOB_GPUS={resources.gpu}
python -m strdiffusion ...``; before torch touches CUDA, :func:`claim` takes that many free slots
from the pool with exclusive ``flock`` locks (released by the kernel when the process exits, even
on ``kill -9``) and sets ``CUDA_VISIBLE_DEVICES``. When ``CUDA_VISIBLE_DEVICES`` is already set
(SLURM does this for ``--gres=gpu``), nothing changes.

:func:`resolve_device` is the one place where a stage's ``--device`` option becomes a torch device.

Environment: ``STRDIFFUSION_GPU_POOL`` (e.g. ``0,1,2,3``; default: the GPUs ``nvidia-smi -L``
lists) and ``STRDIFFUSION_GPU_LOCK_DIR`` (default: a per-user folder under the temp dir).
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_held = []  # open lock files, kept for the life of the process


def pool() -> list[str]:
    env = os.environ.get("STRDIFFUSION_GPU_POOL", "").strip()
    if env:
        return [g.strip() for g in env.split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    # A GPU split into MIG instances is listed with them ("  MIG 3g.40gb Device 0: (UUID: MIG-...)"); CUDA
    # addresses an instance only by its UUID, so each instance is a slot of its own.
    slots, gpu = [], -1
    for line in out.splitlines():
        if line.startswith("GPU "):
            gpu += 1
            slots.append(str(gpu))
        elif line.strip().startswith("MIG ") and "UUID: " in line and gpu >= 0:
            if slots and slots[-1] == str(gpu):
                slots.pop()
            slots.append(line.split("UUID: ", 1)[1].strip().rstrip(")"))
    return slots


def workflow_slots(workflow):
    """The ``resources.gpu`` of the workflow's GPU rules, called by the Snakefile: (n, inpaint(wildcards)).

    n is 1 where the machine running the jobs has GPUs (:func:`pool`), else 0; without ``--resources gpu=N``
    Snakemake's limit becomes the number of GPUs, so that no more GPU jobs run at once than there are GPUs.
    A cluster job looks for none, as where it was submitted. A classical method's inpainting takes none."""
    from strdiffusion.settings.methods import CLASSICAL

    found = pool() if workflow.local_exec and not workflow.remote_exec else []
    if found and "gpu" not in workflow.global_resources:
        workflow.register_resource("gpu", len(found))
    n = int(bool(found))

    def inpaint(wildcards):
        return 0 if wildcards.method in CLASSICAL else n

    return n, inpaint


def lock_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"strdiffusion-gpu-locks-{os.getuid()}"
    path = Path(os.environ.get("STRDIFFUSION_GPU_LOCK_DIR", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def claim(n: int, timeout: float = 600.0) -> list[str]:
    """Hold ``n`` free GPU slots and set CUDA_VISIBLE_DEVICES to them; returns the slot ids.

    A job that asks for slots on a machine without a pool (no ``nvidia-smi`` GPUs, no
    STRDIFFUSION_GPU_POOL) is a UserError: it would otherwise run on a GPU shared with every other job.
    """
    from strdiffusion.io.errors import UserError

    if n <= 0 or os.environ.get("CUDA_VISIBLE_DEVICES"):
        return []
    slots = pool()
    if not slots:
        raise UserError(f"this job asks for {n} GPU slot(s) (STRDIFFUSION_JOB_GPUS={n}) but no GPU pool was found "
                        "(`nvidia-smi -L` lists no GPU, STRDIFFUSION_GPU_POOL is unset); set STRDIFFUSION_GPU_POOL=0,1,.. "
                        "or CUDA_VISIBLE_DEVICES, or run without the GPU profile")
    if n > len(slots):
        raise UserError(f"this job asks for {n} GPUs but the pool has {len(slots)} ({','.join(slots)}); "
                        "lower its gpu resource")
    deadline = time.monotonic() + timeout
    got: list[str] = []
    while True:
        for slot in slots:
            if slot in got:
                continue
            fh = open(lock_dir() / f"gpu{slot}.lock", "w")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            _held.append(fh)
            got.append(slot)
            if len(got) == n:
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(got)
                # the job's log says which GPUs it held, from when
                print(f"GPU slot(s) {','.join(got)} held from {time.time():.3f} (CUDA_VISIBLE_DEVICES={','.join(got)})",
                      file=sys.stderr, flush=True)
                return got
        if time.monotonic() > deadline:
            raise UserError(f"no free GPU slot after {timeout:.0f} s; is --resources gpu larger than the pool "
                            f"({','.join(slots)})?")
        time.sleep(0.5)


def claim_from_env() -> list[str]:
    return claim(int(os.environ.get("STRDIFFUSION_JOB_GPUS", "0") or 0))


def resolve_device(name: str = "auto", local_rank: int | None = None):
    """A ``--device`` value (auto | cpu | cuda | cuda:N | any torch device) as a ``torch.device``.

    ``auto`` is cuda when torch sees a GPU, else cpu. A cuda device without a visible GPU, or a name
    torch does not know, is a UserError. ``local_rank`` (one GPU per DDP process) turns a bare
    ``cuda`` into ``cuda:<local_rank>``.
    """
    import torch

    from strdiffusion.io.errors import UserError

    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is visible to torch; use --device cpu or auto")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a torch device (use auto, cpu or cuda)") from None
    if device.type == "cuda" and device.index is None and local_rank is not None:
        return torch.device("cuda", local_rank)
    return device


def check_rank_device(name: str, world_size: int) -> None:
    """Several DDP processes on one machine need one GPU each: a fixed ``cuda:N`` would put them all on N."""
    from strdiffusion.io.errors import UserError

    if world_size > 1 and str(name).startswith("cuda:"):
        raise UserError(f"--device {name} with {world_size} processes puts every process on one GPU; "
                        "use --device cuda (process r takes the r-th visible GPU)")
