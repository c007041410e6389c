"""Places2-size rehearsal: the real Places2 DAG at a fraction of its test set, stage by stage.

``python -m benchmarks --only scale --fraction 1,2,4`` runs real Snakemake on
``config/paper/places2.yaml`` in a temporary copy of the workflow, with overrides:

- test images: synthetic 256 px photographs-like PNGs (gradients, discs, noise) made on the fly,
  ``fraction`` % of Places2's 36,500 (at least 2); 4 training images (training is skipped);
- masks: a synthetic folder in NVIDIA's layout (hole-white 512 px PNGs ``testing_mask_dataset/NNNNN.png``,
  2,000 per 10 % hole-ratio group in name order, up to the last configured bin's group: 10,000 files for
  Places2's bins), ``per_bin`` scaled with the test set (at most the paper's 2,000);
- rows: all 7 of the config, but every row's inpainting job runs the mean-colour fill (the copy's
  ``inpaint_shard`` rule is rewritten to ``--method mean_fill`` without checkpoints), so the diffusion
  rows cost what a classical row costs and nothing is trained (``checkpoints:`` point at the shipped
  networks, never loaded);
- metric networks: pytorch-fid's Inception and LPIPS's AlexNet architectures with RANDOM weights under a
  temporary TORCH_HOME. Their numbers are meaningless and are never printed; only time, memory and
  file counts are reported.

Per job: wall time and peak RSS, recorded at exit by a ``sitecustomize`` hook on the jobs' PYTHONPATH
(``resource.getrusage``: the process's own peak and its largest waited-for child), grouped by stage.
Per stage: summed job seconds, the largest job's peak RSS, the files it wrote and their megabytes, and between
fractions the growth exponent log(t2/t1) / log(n2/n1) of its time against the number of test images.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLACES2_TEST = 36500
NVIDIA_FILES, NVIDIA_PER_GROUP = 12000, 2000
STAGES = ("data preparation", "structure maps", "masks and pairing", "inpainting", "per-image metrics",
          "reference statistics", "set metrics", "tables", "explorer", "report")
README_BEGIN, README_END = "<!-- scale table: begin (written by python -m benchmarks --only scale) -->", \
    "<!-- scale table: end -->"
FEATURES = "pytorch-fid Inception v3 and LPIPS AlexNet architectures, random weights"
TITLE = "scale: Places2-size rehearsal (synthetic data, stand-in metric networks)"

HOOK = '''\
import atexit, json, os, time
_log = os.environ.get("STRDIFFUSION_REHEARSAL_JOBS")
if _log:
    _t0 = time.time()

    def _record():
        import resource
        try:
            with open("/proc/self/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\\0") if a]
        except OSError:
            return
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        line = json.dumps({"argv": argv, "start": _t0, "end": time.time(), "maxrss_kb": max(own, kids)}) + "\\n"
        fd = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    atexit.register(_record)
'''

INPAINT_PATCH = (  # (text of workflow/rules/inpaint.smk, its rehearsal replacement)
    ("        unpack(method_models),\n", ""),
    ("        checkpoints=checkpoint_options,\n", "        checkpoints=\"\",\n"),
    ("        method=lambda wildcards: base_method(wildcards.method),\n", "        method=\"mean_fill\",\n"),
)


def add_arguments(p) -> None:
    g = p.add_argument_group("scale (Places2-size rehearsal)")
    g.add_argument("--fraction", default="2",
                   help="percent of the Places2 test set (36,500 images), 0 < f <= 100; comma-separated for a "
                        "growth series, e.g. 1,2,4 (default 2)")
    g.add_argument("--scale-rows", type=int, default=0, help="only the first N method rows (default: all 7)")
    g.add_argument("--scale-bins", type=int, default=0, help="only the first N mask bins (default: all 4)")
    g.add_argument("--scale-timeout", type=int, default=6 * 3600, help="seconds allowed for one Snakemake run")
    g.add_argument("--scale-readme", default=str(REPO / "benchmarks/README.md"),
                   help="Markdown file whose rehearsal section receives the table ('' = none)")


def fractions(text: str) -> list[float]:
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"error: --fraction {text!r}: expected percents such as 2 or 1,2,4")
    if not out or any(not 0 < f <= 100 for f in out):
        raise SystemExit(f"error: --fraction {text!r}: every percent must be in (0, 100]")
    return sorted(set(out))


# ---------------------------------------------------------------------- synthetic inputs

def write_images(folder: Path, n: int, size: int, seed: int) -> None:
    """``n`` RGB PNGs: a random two-colour gradient with a few discs and mild noise (photograph-like entropy)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) % 1.0
        img = a + (b - a) * t[..., None]
        for _ in range(3):
            cx, cy, r = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.05, 0.25)]
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 6, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"Places365_val_{i + 1:08d}.png")


def write_nvidia_masks(folder: Path, groups: int = 6, px: int = 512, seed: int = 0) -> None:
    """NVIDIA's irregular-mask test-set layout: hole-white PNGs in name order, file k in hole-ratio group
    k // 2,000 ((0, 10], (10, 20], ... (50, 60] %), the first ``groups`` groups (all 6: the 12,000 files).
    Each hole is one box of the group's area at a random place and aspect: the stages need only the layout
    and the ratios, and a box is cheap to draw."""
    import numpy as np
    from PIL import Image

    sub = folder / "testing_mask_dataset"
    sub.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(min(NVIDIA_FILES, groups * NVIDIA_PER_GROUP)):
        area = rng.uniform(0.1 * (k // NVIDIA_PER_GROUP) + 0.02, 0.1 * (k // NVIDIA_PER_GROUP) + 0.08) * px * px
        h = int(min(px, max(1, math.sqrt(area * rng.uniform(0.5, 2.0)))))
        w = int(min(px, max(1, round(area / h))))
        y, x = int(rng.integers(0, px - h + 1)), int(rng.integers(0, px - w + 1))
        hole = np.zeros((px, px), dtype=bool)
        hole[y:y + h, x:x + w] = True
        Image.fromarray(hole).save(sub / f"{k:05d}.png")


def workflow_copy(work: Path) -> None:
    """The repository's workflow in ``work``, its inpaint rule running the mean-colour fill for every row."""
    shutil.copy(REPO / "Snakefile", work / "Snakefile")
    for folder in ("workflow", "config", "checkpoints"):
        shutil.copytree(REPO / folder, work / folder)
    rule = work / "workflow/rules/inpaint.smk"
    text = rule.read_text()
    for old, new in INPAINT_PATCH:
        if old not in text:
            raise SystemExit(f"error: workflow/rules/inpaint.smk no longer contains {old.strip()!r}; "
                             "update benchmarks/scale.py INPAINT_PATCH to the rule's new text")
        text = text.replace(old, new)
    rule.write_text(text)


def paper_config() -> dict:
    """config/paper/places2.yaml with the files it extends."""
    from strdiffusion.settings.config import read_layer

    return read_layer(REPO / "config/paper/places2.yaml")


def overrides(inputs: Path, n_test: int, rows: int, bins: int) -> dict:
    paper = paper_config()
    masks = paper["datasets"]["places2"]["masks"]
    out = {
        "checkpoints": {net: f"checkpoints/laptop/{net}.pt" for net in paper["checkpoints"]},
        "datasets": {"places2": {
            "path": str(inputs / "train_large"), "test_path": str(inputs / "val_large"), "n_test": n_test,
            "masks": {"nvidia_source": str(inputs / "nvidia_masks"),
                      "per_bin": min(masks["per_bin"], n_test), "train_pool": 16}}},
        "metrics": {"fetch_weights": False},
    }
    if rows:
        out["methods"] = paper["methods"][:rows]
    if bins:
        out["datasets"]["places2"]["masks"]["bins"] = masks["bins"][:bins]
    return out


# ---------------------------------------------------------------------- measuring

def stage_of(argv: list[str]) -> str | None:
    """The rehearsal stage of a recorded process, from its command line."""
    if "-m" in argv:
        mod = argv[argv.index("-m") + 1:]
        if mod[:1] == ["snakemake"]:
            return "report" if "--report" in mod else None
        if mod[:1] == ["strdiffusion"] and len(mod) > 1:
            cmd, sub = mod[1], (mod[2] if len(mod) > 2 else "")
            if cmd == "metrics":
                return {"images": "per-image metrics", "reference": "reference statistics",
                        "sets": "set metrics"}.get(sub)
            return {"data": "data preparation", "structure": "structure maps", "masks": "masks and pairing",
                    "inpaint": "inpainting", "tables": "tables", "explorer": "explorer", "figures": "report",
                    "curves": "report"}.get(cmd)
    return None


def stage_of_file(rel: str) -> str | None:
    """The stage that wrote a file, from its path relative to the run folder."""
    parts = rel.split("/")
    if parts[0] == "report.html":
        return "report"
    if parts[0] != "results" or len(parts) < 3:
        return None
    if parts[1] == "tables":
        return "tables"
    if parts[1] == "figures":
        return "report"
    kind = parts[2]
    if kind == "explorer":
        return "explorer"
    if kind in ("data", "structure", "masks", "inpaint"):
        return {"data": "data preparation", "structure": "structure maps", "masks": "masks and pairing",
                "inpaint": "inpainting"}[kind]
    if kind == "metrics":
        if parts[3] == "reference":
            return "reference statistics"
        return "per-image metrics" if parts[-1].startswith("per_image") else "set metrics"
    return None


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_once(percent: float, rows: int, bins: int, inputs: Path, torch_home: Path, timeout: int) -> dict:
    n_test = max(2, round(PLACES2_TEST * percent / 100))
    with tempfile.TemporaryDirectory(prefix="strdiffusion-scale-") as tmp:
        tmp = Path(tmp)
        work = tmp / "run"
        work.mkdir()
        workflow_copy(work)
        t0 = time.perf_counter()
        shutil.rmtree(inputs / "val_large", ignore_errors=True)
        write_images(inputs / "val_large", n_test, 256, seed=1)
        synth_s = time.perf_counter() - t0
        import yaml

        (work / "rehearsal.yaml").write_text(yaml.safe_dump(overrides(inputs, n_test, rows, bins)))
        hook = tmp / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(HOOK)
        jobs = tmp / "jobs.jsonl"
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = os.pathsep.join([str(hook), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["TORCH_HOME"] = str(torch_home)
        env["STRDIFFUSION_REHEARSAL_JOBS"] = str(jobs)
        config = ["--configfile", "config/paper/places2.yaml", "rehearsal.yaml"]
        snake = [sys.executable, "-m", "snakemake", "--cores", "2", *config]
        load = loadavg()
        t0 = time.perf_counter()
        res = subprocess.run(snake, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise SystemExit(f"error: the rehearsal's Snakemake run ({percent} %) failed:\n{res.stderr[-3000:]}\n"
                             + "".join(f"--- {p.relative_to(work)}\n{p.read_text()[-1500:]}"
                                       for p in sorted((work / "logs").rglob("*.log")) if "rror" in p.read_text()))
        res = subprocess.run([*snake, "--report", "report.html"], cwd=work, env=env, capture_output=True, text=True,
                             timeout=timeout)
        if res.returncode != 0:
            raise SystemExit(f"error: the rehearsal's report ({percent} %) failed:\n{res.stderr[-3000:]}")
        total_s = time.perf_counter() - t0
        rows_out = {s: {"seconds": 0.0, "jobs": 0, "peak_rss_mb": 0.0, "files": 0, "mb": 0.0} for s in STAGES}
        for line in jobs.read_text().splitlines():
            rec = json.loads(line)
            stage = stage_of(rec["argv"])
            if stage:
                r = rows_out[stage]
                r["seconds"] += rec["end"] - rec["start"]
                r["jobs"] += 1
                r["peak_rss_mb"] = max(r["peak_rss_mb"], rec["maxrss_kb"] / 1024)
        for root, _, files in os.walk(work):
            for name in files:
                stage = stage_of_file(os.path.relpath(os.path.join(root, name), work).replace(os.sep, "/"))
                if stage:
                    rows_out[stage]["files"] += 1
                    rows_out[stage]["mb"] += os.path.getsize(os.path.join(root, name)) / 1e6
    return {"percent": percent, "n_test": n_test, "stages": rows_out, "snakemake_seconds": total_s,
            "synthesis_seconds": synth_s, "loadavg_before": load, "loadavg_after": loadavg()}


def growth(runs: list[dict]) -> list[dict]:
    """Per consecutive pair of runs: each stage's exponent of job seconds against test images."""
    out = []
    for a, b in zip(runs, runs[1:]):
        ratio = math.log(b["n_test"] / a["n_test"])
        out.append({"from": a["percent"], "to": b["percent"], "exponents": {
            s: math.log(b["stages"][s]["seconds"] / a["stages"][s]["seconds"]) / ratio
            if a["stages"][s]["seconds"] > 0 and b["stages"][s]["seconds"] > 0 else None for s in STAGES}})
    return out


def table(result: dict) -> str:
    runs, grow = result["runs"], result["growth"]
    head = "| stage | " + " | ".join(f"{r['percent']:g} % ({r['n_test']} images): s / jobs / peak RSS MB / files / MB"
                                      for r in runs)
    head += "".join(f" | exponent {g['from']:g}→{g['to']:g} %" for g in grow) + " |"
    lines = [head, "|" + "---|" * (1 + len(runs) + len(grow))]
    for s in STAGES:
        cells = [f"{r['stages'][s]['seconds']:.1f} / {r['stages'][s]['jobs']} / {r['stages'][s]['peak_rss_mb']:.0f}"
                 f" / {r['stages'][s]['files']} / {r['stages'][s].get('mb', 0):.1f}" for r in runs]
        cells += ["n/a" if g["exponents"][s] is None else f"{g['exponents'][s]:.2f}" for g in grow]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines.append("| Snakemake wall (run + report) | " + " | ".join(f"{r['snakemake_seconds']:.0f} s" for r in runs)
                 + " |" * (len(grow) + 1))
    lines.append("| load average before → after | " + " | ".join(
        f"{r['loadavg_before'][0]:.1f} → {r['loadavg_after'][0]:.1f}" for r in runs) + " |" * (len(grow) + 1))
    return "\n".join(lines)


def write_readme(path: Path, result: dict) -> None:
    """Replace the generated block of the rehearsal section (or append the section), atomically."""
    block = (f"{README_BEGIN}\n\nMeasured {result['date']} on {result['cpu_count']} cores; command: "
             f"`{result['command']}`. Rows: {', '.join(result['rows'])}; bins: {', '.join(result['bins'])} %. Metric "
             f"networks: "
             f"{FEATURES} (time and memory only; their values are not metrics).\n\n{table(result)}\n\n{README_END}")
    text = path.read_text() if path.exists() else ""
    if README_BEGIN in text and README_END in text:
        text = text[:text.index(README_BEGIN)] + block + text[text.index(README_END) + len(README_END):]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + "## Places2-size rehearsal\n\n" + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run(a, result_all: dict) -> None:
    """The ``scale`` section: one rehearsal per ``--fraction`` percent, the table and the growth exponents."""
    import datetime

    from strdiffusion.metrics.nets import write_standin_weights

    paper = paper_config()
    rows = paper["methods"][:a.scale_rows] if a.scale_rows else paper["methods"]
    bins = paper["datasets"]["places2"]["masks"]["bins"][:a.scale_bins or None]
    print(f"  metric networks: {FEATURES}: time and memory only, no metric values are reported", flush=True)
    result = {"rows": [f"{m} (mean-colour fill)" if m not in ("telea", "navier_stokes", "biharmonic", "mean_fill")
                       else m for m in rows], "bins": [f"{100 * lo:g}-{100 * hi:g}" for lo, hi in bins],
              "features": FEATURES, "cpu_count": os.cpu_count(),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python -m benchmarks --only scale --fraction " + a.fraction
              + (f" --scale-rows {a.scale_rows}" if a.scale_rows else "")
              + (f" --scale-bins {a.scale_bins}" if a.scale_bins else ""), "runs": []}
    with tempfile.TemporaryDirectory(prefix="strdiffusion-scale-inputs-") as tmp:
        inputs, torch_home = Path(tmp) / "resources", Path(tmp) / "torch_home"
        t0 = time.perf_counter()
        write_images(inputs / "train_large", 4, 256, seed=0)
        # index binning reads groups up to the last bin's (NVIDIA group g holds (10g, 10g + 10] %)
        write_nvidia_masks(inputs / "nvidia_masks", groups=round(bins[-1][1] * 10))
        write_standin_weights(torch_home / "hub" / "checkpoints")
        print(f"  synthetic training images, NVIDIA-layout masks and stand-in weights: "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        for percent in fractions(a.fraction):
            r = run_once(percent, a.scale_rows, a.scale_bins, inputs, torch_home, a.scale_timeout)
            result["runs"].append(r)
            print(f"  {percent:g} % ({r['n_test']} test images): Snakemake {r['snakemake_seconds']:.0f} s, "
                  f"load {r['loadavg_before'][0]:.1f} -> {r['loadavg_after'][0]:.1f}", flush=True)
            result["growth"] = growth(result["runs"])
            if a.scale_readme:  # after every fraction: a long series stopped midway keeps what it measured
                write_readme(Path(a.scale_readme), result)
    result_all["scale"] = result
    print(table(result), flush=True)
    if a.scale_readme:
        print(f"  wrote the table into {a.scale_readme}", flush=True)
