"""Re-make a trained checkpoint from its provenance: the commit and the training command in its metadata.

The checkpoint's commit is unpacked from the git history into a work folder, that commit's workflow makes the
training inputs there (data, structure maps, training masks), and the training job the file records (rendered as
``strdiffusion train`` options, one word per value, so paths with spaces survive) runs again with its outputs
redirected into the work folder. Training on the recorded CPU thread count is
deterministic, and a resumed training equals an uninterrupted one, so the replay's weights equal the file's bit for
bit (float16-rounded first when the file was shrunk for shipping); only the metadata that describes the replay
itself differs (training seconds, paths). The replay runs in the current Python environment, on the device the
recorded command names (``auto``: a GPU where one is visible), so the torch version and the device must match the
ones that trained the file: for a file trained on a CPU, run it with ``CUDA_VISIBLE_DEVICES=`` on a GPU machine.

A full replay takes as long as the training did. ``rows=K`` is the quick check: it stops the replay once its
learning curve has K validation rows after the first and compares them with the curve stored in the file (loss,
learning rate and validation scores, exactly).

    strdiffusion remake checkpoints/laptop/structure.pt
    strdiffusion remake checkpoints/laptop/texture.pt --rows 2      # the first 1,000 iterations only
"""
from __future__ import annotations

import io
import logging
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from strdiffusion.io.errors import UserError

log = logging.getLogger("strdiffusion.models.remake")

TIME_COLUMNS = ("seconds", "val_seconds")  # wall time: never equal between two runs
REDIRECTED = ("--out", "--curve", "--state-dir")


@dataclass(frozen=True)
class Provenance:
    """What a checkpoint records about its training: the commit and the command's arguments after ``train`` (the
    job rendered as options, or, in files that record only a command line, its words)."""

    path: Path
    commit: str
    args: list[str]
    meta: dict

    def option(self, name: str) -> str:
        if name not in self.args or self.args.index(name) + 1 >= len(self.args):
            raise UserError(f"checkpoint {self.path}: its training command has no {name} value; it cannot be replayed")
        return self.args[self.args.index(name) + 1]


def read_provenance(path) -> Provenance:
    """The commit and training command of a checkpoint written by ``strdiffusion train``, or a one-line error."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; give a file written by `strdiffusion train`")
    try:
        meta = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one line
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}); give a file written by "
                        "`strdiffusion train`") from None
    commit, command = (meta.get(k, "") if isinstance(meta, dict) else "" for k in ("commit", "command"))
    if not commit or not command:
        raise UserError(f"checkpoint {path} records no {'commit' if not commit else 'training command'}: only a "
                        "checkpoint trained from a git checkout by `strdiffusion train` can be re-made")
    if isinstance(meta.get("train_argv"), list):  # rendered from the typed job: one word per value, spaces kept
        return Provenance(path, commit, [str(w) for w in meta["train_argv"]], meta)
    words = command.split()  # files that record only the command line, joined by spaces
    if "train" not in words:
        raise UserError(f"checkpoint {path}: its command '{command[:80]}' is not a `strdiffusion train` command")
    return Provenance(path, commit, _separate(words[words.index("train") + 1:]), meta)


def _separate(words: list[str]) -> list[str]:
    """``--name=value`` as ``--name``, ``value``, the form every lookup and redirection here expects."""
    out = []
    for word in words:
        out += word.split("=", 1) if word.startswith("--") and "=" in word else [word]
    return out


def unpack_commit(repo: Path, commit: str, dest: Path) -> Path:
    """The tree of ``commit`` (from ``repo``'s history) in ``dest``; kept when already there."""
    marker = dest / ".remake_commit"
    if marker.is_file() and marker.read_text() == commit:
        return dest
    res = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit], capture_output=True)
    if res.returncode != 0:
        raise UserError(f"commit {commit[:10]} is not in the git history of {repo}: run from a full clone of the "
                        "project (`git fetch --unshallow` in a shallow one)")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(res.stdout)) as tar:
        tar.extractall(dest, filter="data")
    marker.write_text(commit)
    return dest


def default_configfile(tree: Path, prov: Provenance) -> str | None:
    """The config that made the training inputs: ``config/<data set>.yaml`` of the commit where it exists (the
    data set is the folder after ``results/`` in ``--images``), else the default config (None)."""
    parts = Path(prov.option("--images")).parts
    name = parts[parts.index("results") + 1] if "results" in parts[:-1] else ""
    return f"config/{name}.yaml" if name and (tree / "config" / f"{name}.yaml").is_file() else None


def _env(tree: Path) -> dict:
    """The commit's package first on the path (the workflow's jobs and the replay import it, not this one)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH")) if p))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def make_inputs(tree: Path, prov: Provenance, configfile: str | None, cores: int) -> None:
    """The training's images, structure maps and masks, made by the commit's own workflow."""
    targets = [prov.option(k) for k in ("--images", "--structure", "--masks")]
    # targets first: --configfile takes every word after it
    command = [sys.executable, "-m", "snakemake", *targets, "--cores", str(cores)]
    command += ["--configfile", configfile] if configfile else []
    log.info("making the training inputs at %s: %s", prov.commit[:10], shlex.join(command[2:]))
    res = subprocess.run(command, cwd=tree, env=_env(tree), capture_output=True, text=True)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise UserError(f"the workflow of commit {prov.commit[:10]} could not make the training inputs "
                        f"({' | '.join(tail)}); check --configfile")


def replay_command(prov: Provenance, out_dir: Path, iterations: int | None = None) -> tuple[list[str], dict]:
    """The recorded command with its outputs in ``out_dir`` (and ``--iterations`` when given); returns it and the
    new output paths."""
    name = prov.path.stem
    outputs = {"--out": out_dir / f"{name}.pt", "--curve": out_dir / f"{name}_curve.csv",
               "--state-dir": out_dir / f"{name}_state"}
    args = list(prov.args)
    for flag in REDIRECTED:
        if flag in args:
            args[args.index(flag) + 1] = str(outputs[flag])
        else:
            args += [flag, str(outputs[flag])]
    if iterations is not None:
        args[args.index("--iterations") + 1] = str(iterations)
    return [sys.executable, "-m", "strdiffusion", "train", *args], outputs


def segments(prov: Provenance, totals: list[int] | None = None) -> list[tuple[int, int]]:
    """(``--iterations``, last iteration) of each run of the training, in order, the recorded command last.

    A training resumed with more iterations ran its first part on another learning-rate schedule, so each part is
    replayed with its own ``--iterations``: from the file's ``resumes`` record (the planned iterations and the
    iteration of each resume), or, for files older than that record, from ``totals``, the ``--iterations`` of each
    run (each ran to its end)."""
    final = int(prov.option("--iterations"))
    if totals:
        if totals[-1] != final or sorted(totals) != list(totals):
            raise UserError(f"--segments {','.join(map(str, totals))}: must rise to the file's own --iterations "
                            f"{final} (for {prov.path})")
        return [(t, t) for t in totals]
    resumes = prov.meta.get("resumes") or []
    parts = [(int(r["planned"]), int(r["at"])) for r in resumes if r.get("planned")]
    return [*parts, (final, final)]


def _curve_rows(path: Path):
    import pandas as pd

    try:
        return pd.read_csv(path)
    except (OSError, ValueError):  # not written yet, or being replaced
        return None


def run_replay(tree: Path, command: list[str], curve: Path, stop=None, poll: float = 2.0) -> None:
    """Run one replayed training to its end, or until ``stop(curve)`` holds for its learning curve (read as it
    is saved, with the state, every ``--checkpoint-every`` iterations). Its log goes to ``<name>_replay.log``
    beside the curve (``<name>_curve.csv``)."""
    log.info("replaying at %s: %s", tree, shlex.join(command[2:]))
    curve.parent.mkdir(parents=True, exist_ok=True)
    log_path = curve.with_name(curve.name.replace("_curve.csv", "_replay.log"))
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(command, cwd=tree, env=_env(tree), stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        while proc.poll() is None:
            if stop is not None:
                df = _curve_rows(curve)
                if df is not None and len(df) and stop(df):
                    return
            time.sleep(poll)
        if proc.returncode != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-2:]
            raise UserError(f"the replayed training failed with status {proc.returncode} (log: {log_path}): "
                            f"{' | '.join(tail)}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def compare_curves(stored: dict, replay, rows: int | None = None) -> list[str]:
    """Columns (time aside) where the replay's curve differs from the stored one, over the first ``rows`` + 1 rows
    (all when None); NaN equals NaN (the first row has no training loss)."""
    n = len(stored["iteration"]) if rows is None else rows + 1
    if len(replay) < n:
        return [f"rows ({len(replay)} of {n})"]
    return [k for k in stored if k not in TIME_COLUMNS and (k not in replay or not np.array_equal(
        np.asarray(stored[k][:n], dtype=np.float64), replay[k].to_numpy(np.float64)[:n], equal_nan=True))]


def compare_weights(stored: dict, replay_path: Path) -> list[str]:
    """Names of the tensors where the replay differs from ``stored`` (the file's payload), after rounding the
    replay to float16 when the file was shrunk."""
    import torch

    replay = torch.load(replay_path, map_location="cpu", weights_only=True)["state_dict"]
    want = stored["state_dict"]
    if set(replay) != set(want):
        return sorted(set(replay) ^ set(want))
    half = stored.get("stored_dtype") == "float16"
    return [k for k in want if not torch.equal(want[k], replay[k].half() if half and replay[k].is_floating_point()
                                               else replay[k])]


def replay_segments(tree: Path, prov: Provenance, out_dir: Path, parts, rows: int | None) -> dict:
    """Each part of the training in turn, each resuming from the state the one before saved (a part the curve
    has passed already is skipped: a second call resumes); returns the output paths."""
    outputs = replay_command(prov, out_dir)[1]
    curve = outputs["--curve"]
    for i, (total, last) in enumerate(parts):
        final = i == len(parts) - 1

        def reached(df, last=last, final=final) -> bool:
            """The quick check's rows are in, or this part (not the last, which runs to its end) got to its end."""
            return (rows is not None and len(df) > rows) or (not final and df["iteration"].iloc[-1] >= last)

        done = _curve_rows(curve)
        if done is not None and len(done) and reached(done):
            continue
        run_replay(tree, replay_command(prov, out_dir, total)[0], curve, reached)
    return outputs


def remake(path, work, repo=None, configfile: str | None = None, cores: int = 2, rows: int | None = None,
           totals: list[int] | None = None) -> dict:
    """Re-make checkpoint ``path`` in folder ``work`` (kept: a second call resumes the replay). Returns the outcome:
    ``equal`` (weights and curve, or the first ``rows`` curve rows), the differing ``weights`` and ``curve``
    entries, and the replay's files. ``totals``: see :func:`segments`."""
    prov = read_provenance(path)
    work = Path(work).resolve()
    if repo is None:
        res = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True)
        if res.returncode != 0:
            raise UserError("not inside a git checkout of the project: give --repo, a clone with its history")
        repo = Path(res.stdout.strip())
    tree = unpack_commit(Path(repo), prov.commit, work / f"src-{prov.commit[:10]}")
    configfile = configfile if configfile is not None else default_configfile(tree, prov)
    make_inputs(tree, prov, configfile, cores)
    parts = segments(prov, totals)
    outputs = replay_segments(tree, prov, work / "replay", parts, rows)
    curve = compare_curves(prov.meta.get("curve", {}), _curve_rows(outputs["--curve"]), rows)
    weights = None if rows is not None else compare_weights(prov.meta, outputs["--out"])
    return {"equal": not curve and not weights, "weights": weights, "curve": curve, "commit": prov.commit,
            "configfile": configfile or "config/config.yaml", "outputs": outputs, "segments": parts}
