"""Workflow jobs and the Snakemake process that runs them: the environment the jobs inherit (set in memory at parse
time), a job's lines on the driver's console, and a failed job's error read back for that console."""
from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

# Set for the workflow's jobs: their options come from the config, so their errors name config keys.
WORKFLOW_JOB = "STRDIFFUSION_WORKFLOW_JOB"


def python_first_on_path(basedir: str, environ=os.environ) -> str | None:
    """Rules run `python -m strdiffusion ...`: make that `python` the interpreter running Snakemake (which
    imports strdiffusion). Jobs inherit ``environ``, changed in memory only, so parsing writes nothing. Under
    --sdm conda the job's environment wins and finds the package in ``basedir`` through PYTHONPATH.

    Returns None, or the one-line error when no `python` on PATH can be this interpreter.
    """
    here = os.path.dirname(sys.executable)
    candidate = os.path.join(here, "python")
    if os.path.exists(candidate) and os.path.samefile(candidate, sys.executable):
        environ["PATH"] = here + os.pathsep + environ.get("PATH", os.defpath)
    else:  # e.g. /usr/bin/python3.11 without /usr/bin/python: then `python` on PATH must be this interpreter
        found = shutil.which("python", path=environ.get("PATH"))
        if not (found and os.path.samefile(found, sys.executable)):
            return (f"error: rules run `python`, but {sys.executable} (the Python running Snakemake) has no `python` "
                    f"beside it and PATH gives {found or 'none'}; run the snakemake of a virtual or conda "
                    "environment (`.venv/bin/snakemake --cores all`)")
    environ[WORKFLOW_JOB] = "1"
    if os.path.isdir(os.path.join(basedir, "strdiffusion")):  # the clone: strdiffusion/ beside the Snakefile
        environ["PYTHONPATH"] = os.pathsep.join(p for p in (basedir, environ.get("PYTHONPATH")) if p)
    return None


CONSOLE_FD = "STRDIFFUSION_CONSOLE_FD"  # a descriptor open on the console of whoever started the job


def to_log_and_console(log, line: str) -> None:
    """A warning for the job's log (its stderr) and, where the workflow rule opened one (``3>&2`` before the
    log's redirection, with STRDIFFUSION_CONSOLE_FD=3), a line on the Snakemake driver's console too."""
    log.warning("%s", line)
    fd = os.environ.get(CONSOLE_FD, "")
    if fd.isdigit():
        try:
            os.write(int(fd), f"strdiffusion: {line}\n".encode())
        except OSError:
            pass


def failed_job_errors(snakemake_logs, root=".") -> list[str]:
    """For a run that failed: ``<job log>: <line>`` for each failed job, its last one-line error (``error: ...``)
    or else the last line of its log, read from Snakemake's own logs of the run (an ``onerror`` handler's
    ``log``), so the driver's console says why a job failed without opening its log."""
    logs = [snakemake_logs] if isinstance(snakemake_logs, (str, os.PathLike)) else snakemake_logs
    names = []
    for snakemake_log in logs:
        for block in re.split(r"\n(?=Error in rule )", _text(Path(snakemake_log)))[1:]:
            found = re.search(r"^\s+log: (.+?) \(check log file", block, re.M)
            names += found.group(1).split(", ") if found else []
    out = []
    for name in dict.fromkeys(names):
        lines = [line.strip() for line in _text(Path(root) / name).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error: ")]
        if lines:
            out.append(f"{name}: {(errors or lines)[-1]}")
    return out


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
