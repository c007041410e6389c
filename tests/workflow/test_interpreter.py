"""Jobs find their interpreter: rules run the library with the Python that runs Snakemake,
not whatever `python` comes first on PATH; without the environment, start-up fails with one line."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.workflow import filled_profile


def _snakemake(repo: Path) -> str:
    venv = repo / ".venv" / "bin" / "snakemake"
    return str(venv if venv.exists() else Path(sys.executable).with_name("snakemake"))


def _workdir(tmp_path: Path, repo: Path) -> Path:
    """A clone's workflow files (Snakefile, workflow/, config/) in an empty folder."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(repo / "Snakefile", work / "Snakefile")
    shutil.copytree(repo / "workflow", work / "workflow")
    shutil.copytree(repo / "config", work / "config")
    return work


def _bare_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "LC_ALL", "TMPDIR", "OMP_NUM_THREADS")}
    env.update(PATH="/usr/bin:/bin", TORCH_HOME=str(tmp_path / "torch_home"))
    return env


@pytest.mark.slow
def test_interpreter_data_stage_runs_with_path_stripped_of_the_environment(tmp_path, repo_root):
    """`env PATH=/usr/bin:/bin .venv/bin/snakemake --cores 1 <data target>`: the job must not pick up the
    system python (which has no cv2/strdiffusion here) from PATH."""
    work = _workdir(tmp_path, repo_root)
    res = subprocess.run([_snakemake(repo_root), "--cores", "1", "results/builtin/data/manifest.csv"], cwd=work,
                         env=_bare_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stderr + (work / "logs/builtin/prepare_data.log").read_text())[-3000:]
    manifest = (work / "results/builtin/data/manifest.csv").read_text().splitlines()
    assert manifest[0].startswith("id,") and len(manifest) > 100
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system:  # say whether the PATH python could have done it (if it can, this test proves less)
        blind = subprocess.run([system, "-c", "import strdiffusion, cv2"], capture_output=True, env=_bare_env(tmp_path))
        print("system python3 imports strdiffusion+cv2:", blind.returncode == 0)


def test_interpreter_without_the_environment_fails_at_start_in_one_line(tmp_path, repo_root):
    """The Python running Snakemake lacks a dependency (cv2 hidden by a sitecustomize): one line, no jobs."""
    work = _workdir(tmp_path, repo_root)
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['cv2'] = None  # find_spec('cv2') -> None\n")
    env = _bare_env(tmp_path)
    env["PYTHONPATH"] = str(hide)
    res = subprocess.run([_snakemake(repo_root), "-n", "--cores", "1", "results/builtin/data/manifest.csv"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "cannot import cv2" in lines[0] and ".venv/bin/activate" in lines[0], res.stderr
    assert "Traceback" not in res.stderr and not (work / "results").exists()


@pytest.mark.slow
def test_interpreter_slurm_profile_parses_with_path_stripped(tmp_path, repo_root):
    """With profiles/slurm each job is `<python running snakemake> -m snakemake ...` on the node (the
    executor's default on a shared file system), which parses the workflow again and so puts that
    interpreter first on the job's PATH, as locally. Here: the profile's dry-run under a bare PATH."""
    work = _workdir(tmp_path, repo_root)
    profile = filled_profile(tmp_path / "profile", repo_root)
    res = subprocess.run([_snakemake(repo_root), "-n", "-p", "--profile", str(profile),
                          "results/builtin/data/manifest.csv"], cwd=work, env=_bare_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert any("python -m strdiffusion data" in line for line in out.splitlines())
