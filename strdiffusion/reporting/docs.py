"""The documentation's generated blocks: measured tables from committed results files, numbers that restate a
config from the config, the shipped networks' table from their files.

A page (``README.md``, ``docs/*.md``, ``checkpoints/laptop/README.md``) marks each block as::

    <!-- generated: KIND ARG... -->
    ...
    <!-- end generated -->

and ``strdiffusion docs`` rewrites what lies between the two lines; ``--check`` writes nothing and exits 1
naming every block that differs. Kinds:

- ``table RUN``: PSNR per hole-ratio bin and the clipped share of run RUN, from ``docs/results/RUN.csv``
  (the long format of ``strdiffusion tables``: method, bin, metric, value), stamped with the run's date,
  commit, wall time, machine and command from ``docs/results/runs.csv``;
- ``history RUN...``: the diffusion rows of several runs, one line each, with their stamps;
- ``presets CONFIG...``: what each preset trains (iterations per network, batch, width, T, EMA, test pairs),
  each CONFIG merged over ``config/config.yaml`` as Snakemake's ``--configfile`` does (``a+b``: both);
- ``jobs NAME``: the job counts of a dry run, ``docs/results/jobs_NAME.csv`` (``--count-jobs CONFIG`` makes it);
- ``shipped DIR``: each checkpoint's file, width, iterations, training time, hashes and commit, from its metadata.
"""
from __future__ import annotations

import csv
import difflib
import hashlib
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from strdiffusion.io.errors import UserError
from strdiffusion.io.files import write_text_atomic
from strdiffusion.settings.methods import (DIFFUSION, NETWORKS, base_method, given_checkpoints, train_iterations,
                                           trained_networks)

BLOCK = re.compile(r"(<!-- generated: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)
PAGES = ("README.md", "docs/*.md", "checkpoints/laptop/README.md")
RESULTS = Path("docs") / "results"
RUN_FIELDS = ("run", "date", "commit", "wall_minutes", "machine", "command", "what", "note")


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"{path}: results file not found; restore it from git or remove the block naming it")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def run_info(root: Path, run: str) -> dict:
    path = root / RESULTS / "runs.csv"
    for row in _read_csv(path):
        if row["run"] == run:
            return row
    raise UserError(f"{path}: no run '{run}'; add its row (columns {', '.join(RUN_FIELDS)})")


def stamp(info: dict) -> str:
    wall = f", {info['wall_minutes']} minutes end to end" if info.get("wall_minutes") else ""
    note = f" {info['note']}" if info.get("note") else ""
    return (f"Measured {info['date']} from commit `{info['commit'][:7]}`{wall} ({info['machine']}): "
            f"`{info['command']}`.{note}")


def _measured(root: Path, run: str) -> tuple[list[str], list[str], dict]:
    """(methods, bins, {(method, bin, metric): value}) of a run's results file, in the file's order."""
    methods, bins, values = [], [], {}
    for row in _read_csv(root / RESULTS / f"{run}.csv"):
        method, b, metric = row["method"], row["bin"], row["metric"]
        if method not in methods:
            methods.append(method)
        if metric == "psnr" and b not in bins:
            bins.append(b)
        values[method, b, metric] = float(row["value"]) if row["value"] not in ("", "nan") else float("nan")
    return methods, bins, values


def _label(method: str) -> str:
    from strdiffusion.reporting.tables import METHOD_NAMES

    return METHOD_NAMES.get(method, method)


def _clipped(values: dict, method: str) -> str:
    shares = [v for (m, _, metric), v in values.items() if m == method and metric == "clipped"]
    return f"{100 * min(shares):.1f}-{100 * max(shares):.1f} %" if shares else "—"


def table(root: Path, run: str) -> str:
    methods, bins, values = _measured(root, run)
    clipped = any(metric == "clipped" for (_, _, metric) in values)
    lines = [stamp(run_info(root, run)), "",
             "| method | " + " | ".join(f"{b} %" for b in bins) + (" | clipped |" if clipped else " |"),
             "|---|" + "---:|" * (len(bins) + clipped)]
    # bold as in the run's own table (strdiffusion.reporting.tables.render): the best value of each column
    best = {b: max((v for (_, b2, metric), v in values.items() if b2 == b and metric == "psnr" and v == v),
                   default=None) for b in bins}
    for method in methods:
        cells = []
        for b in bins:
            value = values.get((method, b, "psnr"))
            text = "n/a" if value is None or value != value else f"{value:.2f}"
            cells.append(f"**{text}**" if value is not None and value == best[b] else text)
        if clipped:
            cells.append(_clipped(values, method))
        lines.append(f"| {_label(method)} | " + " | ".join(cells) + " |")
    lines += ["", "PSNR (dB) in the hole-ratio bins; bold: the best of each column among these rows, the rule of "
              "the run's `results/tables/<dataset>.md`"
              + ("; clipped: share of hole pixels outside [0, 1] before clamping, lowest-highest bin." if clipped else ".")]
    if any(m.endswith("_fresh") for m in methods):
        lines[-1] += (" The diffusion rows without \"(trained in this run)\" sample the networks named by the config's "
                      "`checkpoints:` keys.")
    return "\n".join(lines) + "\n"


def history(root: Path, *runs: str) -> str:
    bins = _measured(root, runs[0])[1]
    lines = ["| measured | method | " + " | ".join(f"{b} %" for b in bins) + " | clipped |",
             "|---|---|" + "---:|" * (len(bins) + 1)]
    for run in runs:
        info = run_info(root, run)
        methods, _, values = _measured(root, run)
        wall = f", {info['wall_minutes']} min" if info.get("wall_minutes") else ""
        where = f"{info['what']}: {info['date']}, `{info['commit'][:7]}`{wall}"
        for method in methods:
            if base_method(method) not in DIFFUSION:
                continue
            cells = [f"{values[method, b, 'psnr']:.2f}" if (method, b, "psnr") in values else "" for b in bins]
            clipped = _clipped(values, method).replace("—", "")  # not recorded for that run
            lines.append(f"| {where} | {_label(method)} | " + " | ".join(cells) + f" | {clipped} |")
            where = ""
    return "\n".join(lines) + "\n"


def _config(root: Path, spec: str) -> dict:
    """The validated config of ``spec``'s files (``a.yaml+b.yaml``, relative to ``root``) as the workflow builds it."""
    from strdiffusion.settings.config import workflow_config

    return workflow_config(root, [root / name for name in spec.split("+")], named_by="a `presets` block")


def presets(root: Path, *specs: str) -> str:
    lines = ["| config | structure | texture | critic | IR-SDE | batch | width nf | T | EMA | test pairs per bin |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    notes = ["Training iterations per network (`train.iterations`, `train.net_iterations`); given: a `checkpoints:` "
             "file instead of training; —: no row needs the network."]
    for spec in specs:
        c = _config(root, spec)
        trained, given = trained_networks(c), given_checkpoints(c)
        its = [f"{train_iterations(c, n):,}" if n in trained else "given" if n in given else "—" for n in NETWORKS]
        ema = f"{c['train']['ema']}" if c["train"].get("ema") else "off"
        datasets = c.get("run_datasets") or list(c["datasets"])
        n_test = ", ".join(f"{c['datasets'][d]['n_test']:,}" for d in datasets)
        name = " + ".join(f"`{s}`" for s in spec.split("+"))
        lines.append(f"| {name} | " + " | ".join(its) + f" | {c['train']['batch_size']} | {c['model']['nf']} | "
                     f"{c['sde']['T']} | {ema} | {n_test} |")
        if given and set(given) <= set(trained):
            notes.append(f"{name} also samples given checkpoints in its plain diffusion rows: {', '.join(given)}.")
    return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"


def jobs(root: Path, name: str) -> str:
    info = run_info(root, f"jobs_{name}")
    rows = _read_csv(root / RESULTS / f"jobs_{name}.csv")
    total = sum(int(r["count"]) for r in rows)
    lines = [f"`{info['command']}` plans **{total:,} jobs** (dry run {info['date']}, commit `{info['commit'][:7]}`, "
             f"{info['wall_minutes']} minutes, {info['machine']}):", "", "| rule | jobs |", "|---|---:|"]
    lines += [f"| `{r['rule']}` | {int(r['count']):,} |" for r in rows]
    return "\n".join(lines) + "\n"


def shipped(root: Path, folder: str) -> str:
    import torch

    lines = ["| file | size | width | parameters | iterations | seed | training time | EMA | last validation score "
             "| commit | sha256 | float32 source sha256 |", "|---|---:|---|---:|---:|---:|---:|---|---|---|---|---|"]
    for net in NETWORKS:
        path = root / folder / f"{net}.pt"
        if not path.is_file():
            raise UserError(f"{path}: checkpoint not found (named by a `shipped` block)")
        meta = torch.load(path, map_location="cpu", weights_only=True)
        key = "ngf" if net == "critic" else "nf"
        params = sum(t.numel() for t in meta["state_dict"].values()) / 1e6
        curve = meta["curve"]
        score = f"AUC {curve['auc'][-1]:.3f}" if "auc" in curve else f"{curve['hole_psnr'][-1]:.2f} dB hole PSNR"
        ema = f"{meta['ema_decay']}" if meta.get("ema") else "off"
        lines.append(f"| `{net}.pt` | {path.stat().st_size / 2**20:.2f} MiB | {key} {meta['ctor_kwargs'][key]} | "
                     f"{params:.2f} M | {meta['iteration']:,} | {meta['seed']} | {meta['train_seconds'] / 60:.1f} min | "
                     f"{ema} | {score} | `{meta['commit'][:10]}` | `{hashlib.sha256(path.read_bytes()).hexdigest()}` | "
                     f"`{meta.get('source_sha256', '')}` |")
    return "\n".join(lines) + "\n"


def _plan(root: Path, configfile: str, gpu: str, gpu_mem_gb: float | None = None):
    from strdiffusion.reporting import plan as P
    from strdiffusion.reporting.accelerators import ACCELERATORS

    rates = P.gpu_rates(gpu)
    mem = ACCELERATORS[gpu].memory_gb if gpu_mem_gb is None else gpu_mem_gb
    rows = P.plan_rows(P.load_config([root / configfile], root), mem, rates=rates, measured=False)
    return P, rows, rates, mem


def plan(root: Path, configfile: str, gpu: str, *rest: str) -> str:
    """``strdiffusion plan`` of ``configfile`` on ``gpu`` with ``profiles/slurm`` (``rest``: the GPU's memory in
    GB where it differs from the data sheet's), as a console block."""
    P, rows, rates, mem = _plan(root, configfile, gpu, float(rest[0]) if rest else None)
    profile = P.load_profile(root / "profiles" / "slurm")
    extra = f" --gpu-mem-gb {rest[0]}" if rest else ""
    out = [f"$ strdiffusion plan --configfile {configfile} --profile profiles/slurm --gpu {gpu}{extra}",
           P.render(rows, str(rates), profile), *P.warnings_for(rows, profile, mem)]
    return "```\n" + "\n".join(out) + "\n```\n"


def plan_hours(root: Path, gpus: str, *configfiles: str) -> str:
    """GPU-hours of each config (training, inpainting, total) on each of ``gpus`` (comma-separated)."""
    lines = ["| config | GPU | training GPU-h | inpainting GPU-h | total GPU-h | jobs |", "|---|---|---:|---:|---:|---:|"]
    for configfile in configfiles:
        for gpu in gpus.split(","):
            _, rows, rates, _ = _plan(root, configfile, gpu)
            train = sum(r["gpu_hours"] for r in rows if r["rule"].startswith("train_"))
            total = sum(r["gpu_hours"] for r in rows)
            lines.append(f"| `{configfile}` | {gpu} | {train:,.0f} | {total - train:,.0f} | {total:,.0f} | "
                         f"{sum(r['jobs'] for r in rows):,} |")
    return "\n".join(lines) + f"\n\nTimes from the counted work at the data sheets' peaks, utilization " \
                               f"{rates.utilization:g}, one GPU per job.\n"


def slots(root: Path, gpu: str, runtimes: str, *configfiles: str) -> str:
    """Time slots of the longest training of each config on ``gpu``, for each slot length (minutes)."""
    from strdiffusion.reporting.plan import slots as slots_of

    minutes = [int(m) for m in runtimes.split(",")]
    head = " | ".join(f"slots of {m / 60:g} h" for m in minutes)
    lines = [f"| config | iterations | hours of the longest training | {head} |",
             "|---|---:|---:|" + "---:|" * len(minutes)]
    for configfile in configfiles:
        _, rows, rates, _ = _plan(root, configfile, gpu)
        longest = max((r for r in rows if r["rule"].startswith("train_")),
                      key=lambda r: r["seconds_per_unit"] * r["units_per_job"])
        hours = longest["seconds_per_unit"] * longest["units_per_job"] / 3600
        cells = " | ".join(str(slots_of(longest, m)) for m in minutes)
        lines.append(f"| `{configfile}` | {longest['units_per_job']:,} | {hours:,.0f} ({longest['rule']}) | {cells} |")
    return "\n".join(lines) + f"\n\nOn {rates}, from the counted work (`strdiffusion plan`).\n"


def accelerators(root: Path, which: str) -> str:
    """The plan's GPU table (``which``: all)."""
    from strdiffusion.reporting.accelerators import ACCELERATORS

    lines = ["| `--gpu` | fp32 | TF32 | bf16 | fp16 | memory | bandwidth | source |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for a in ACCELERATORS.values():
        cells = " | ".join(f"{v:g}" if v else "—" for v in (a.fp32, a.tf32, a.bf16, a.fp16))
        lines.append(f"| `{a.name}` | {cells} | {a.memory_gb:g} GB | {a.bandwidth_tbs:g} TB/s | {a.source} |")
    return "\n".join(lines) + "\n\nDense TFLOP/s (half the data sheets' figures with sparsity); — : not supported (runs " \
                               "at fp32).\n"


KINDS = {"accelerators": accelerators, "table": table, "history": history, "presets": presets, "jobs": jobs,
         "shipped": shipped, "plan": plan, "plan_hours": plan_hours, "slots": slots}


def render_block(root: Path, spec: str) -> str:
    kind, *args = spec.split()
    if kind not in KINDS or not args:
        raise UserError(f"generated block '{spec}': unknown kind or no argument; kinds: {', '.join(KINDS)}")
    return KINDS[kind](root, *args)


def pages(root: Path) -> list[Path]:
    found = sorted({p for pattern in PAGES for p in root.glob(pattern) if p.is_file()})
    if not (root / "README.md").is_file():
        raise UserError(f"{root}: no README.md here; run from the repository root or pass --root")
    return found


def regenerate(root: Path) -> dict[Path, tuple[str, str, list[str]]]:
    """{page: (text now, text generated, [specs of the blocks that differ])} for every page with blocks."""
    out = {}
    for page in pages(root):
        text, changed = page.read_text(), []

        def fill(match):
            body = render_block(root, match["spec"])
            if body != match["body"]:
                changed.append(match["spec"])
            return match.group(1) + body + match.group(4)

        new, count = BLOCK.subn(fill, text)
        if count != text.count("\n<!-- generated: ") + text.startswith("<!-- generated: "):
            raise UserError(f"{page}: a `<!-- generated: ... -->` line without its `<!-- end generated -->` line")
        if new != text or changed:
            out[page] = (text, new, changed)
    return out


def _stand_in_data(folder: Path, config: dict) -> dict:
    """A few image files where each data set and mask folder of ``config`` is expected: a dry run plans every
    job from the config (n_test, bins, methods, shard_size), and only needs the inputs to exist."""
    import numpy as np
    from PIL import Image

    override = {}
    for name in config.get("run_datasets") or list(config["datasets"]):
        ds, entry = config["datasets"][name], {}
        for key in ("path", "test_path"):
            if key in ds:
                entry[key] = str(folder / name / key)
        for key in ("train_list", "test_list"):
            if key in ds:
                entry[key] = str(folder / name / f"{key}.flist")
        if ds.get("masks", {}).get("protocol") == "nvidia":
            entry["masks"] = {"nvidia_source": str(folder / name / "masks")}
        for sub in [*(Path(entry[k]) for k in ("path", "test_path") if k in entry), folder / name / "images",
                    folder / name / "masks"]:
            sub.mkdir(parents=True, exist_ok=True)
            for i in range(3):
                Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(sub / f"{i}.png")
        if "train_list" in ds:
            entry["path"] = str(folder / name / "images")
            Path(entry["train_list"]).write_text("0.png\n1.png\n")
            Path(entry["test_list"]).write_text("2.png\n")
        override[name] = entry
    return {"datasets": override}


def count_jobs(root: Path, configfile: str) -> tuple[list[dict], float]:
    """Job counts of ``snakemake -n`` on ``configfile`` in a copy of the workflow, with stand-in data."""
    import shutil

    snakemake = Path(sys.executable).with_name("snakemake")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        shutil.copy(root / "Snakefile", work / "Snakefile")
        for item in ("workflow", "config"):
            shutil.copytree(root / item, work / item)
        if (root / "checkpoints").is_dir():  # the given checkpoints the configs name
            (work / "checkpoints").symlink_to((root / "checkpoints").resolve())
        local = work / "stand_in.yaml"
        local.write_text(yaml.safe_dump(_stand_in_data(Path(tmp) / "data", _config(root, configfile))))
        start = time.monotonic()
        res = subprocess.run([str(snakemake) if snakemake.exists() else "snakemake", "-n", "--cores", "1",
                              "--configfile", configfile, str(local)], cwd=work, capture_output=True, text=True)
        seconds = time.monotonic() - start
    if res.returncode:
        raise UserError(f"{configfile}: the dry run failed: {(res.stderr or res.stdout).strip().splitlines()[-1]}")
    out = res.stdout + res.stderr
    rows = []
    for line in out[out.index("Job stats:"):].splitlines()[3:]:  # the first table: header, rule, dashes
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            break
        if fields[0] != "total":
            rows.append({"rule": fields[0], "count": fields[1]})
    return rows, seconds


def _write_jobs(root: Path, configfile: str) -> None:
    rows, seconds = count_jobs(root, configfile)
    name = Path(configfile).stem
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=("rule", "count"), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(root / RESULTS / f"jobs_{name}.csv", buf.getvalue())
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    runs_path = root / RESULTS / "runs.csv"
    runs = [r for r in _read_csv(runs_path) if r["run"] != f"jobs_{name}"]
    runs.append({"run": f"jobs_{name}", "date": time.strftime("%Y-%m-%d"), "commit": commit or "unknown",
                 "wall_minutes": f"{seconds / 60:.1f}", "machine": f"stand-in data files, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}",
                 "command": f"snakemake -n --cores 1 --configfile {configfile}", "what": "dry run", "note": ""})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RUN_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(runs)
    write_text_atomic(runs_path, buf.getvalue())
    print(f"{configfile}: {sum(int(r['count']) for r in rows)} jobs in {seconds:.0f} s -> {RESULTS}/jobs_{name}.csv")


def update(root, check: bool = False, count_jobs=()) -> int:
    """Rewrite (``check``: compare, printing each differing block) the generated blocks under ``root``,
    after recording the job counts of each config in ``count_jobs``; 1 when ``check`` finds one stale."""
    root = Path(root)
    for configfile in count_jobs:
        _write_jobs(root, configfile)
    stale = regenerate(root)
    for page, (text, new, changed) in stale.items():
        rel = page.relative_to(root)
        if check:
            diff = difflib.unified_diff(text.splitlines(), new.splitlines(), f"{rel} (committed)",
                                        f"{rel} (generated)", n=0, lineterm="")
            print(f"{rel}: generated blocks differ: {'; '.join(changed)}\n" + "\n".join(list(diff)[:20]))
        else:
            write_text_atomic(page, new)
            print(f"{rel}: rewrote {'; '.join(changed)}")
    if check and stale:
        print("run `strdiffusion docs` (or `make docs`) to regenerate them", file=sys.stderr)
        return 1
    if not stale:
        print("the generated blocks are up to date")
    return 0
