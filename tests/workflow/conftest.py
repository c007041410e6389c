"""Fixtures of the workflow tests: the tiny config's whole run, made once per session and shared."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from support.workflow import TINY, make_workdir, snakemake


def _classical_paths(tmp_path_factory) -> tuple[Path, Path]:
    """Where the shared run and its TORCH_HOME live: a folder of the session that every pytest-xdist worker sees
    (the table's n/a footnote names the TORCH_HOME folder, so a run compared with it must use the same one)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "classical_run"
    return root / "run", root / "torch_home"


@pytest.fixture(scope="session")
def classical_torch_home(tmp_path_factory) -> Path:
    """The shared run's TORCH_HOME, for a run compared with it (its table's n/a footnote names the folder)."""
    torch_home = _classical_paths(tmp_path_factory)[1]
    torch_home.mkdir(parents=True, exist_ok=True)
    return torch_home


@pytest.fixture(scope="session")
def classical_run(tmp_path_factory, request):
    """The tiny config's whole run, made once per session by the first worker that asks (a file lock); a worker that
    asks while it is being made waits for it."""
    from filelock import FileLock

    work, torch_home = _classical_paths(tmp_path_factory)
    torch_home.mkdir(parents=True, exist_ok=True)
    done = work.parent / "done"
    with FileLock(str(work.parent / "lock")):
        if not done.is_file():
            if work.exists():  # left half-made by a worker whose run failed
                shutil.rmtree(work)
            make_workdir(work, Path(request.config.rootpath), TINY)
            snakemake(work, torch_home=torch_home)
            done.write_text("")
    return work, torch_home
