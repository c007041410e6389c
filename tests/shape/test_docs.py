"""The documentation: its generated tables equal what `strdiffusion docs` makes from the committed results files,
configs and shipped checkpoints; an edited number fails the check; the README is short, opens with the two
commands and the default's table, and every command in its fenced blocks runs (dry run, or for real on small
inputs); no page speaks of how the project is developed."""
from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from strdiffusion.io.errors import UserError
from strdiffusion.reporting import docs as docs
from strdiffusion.stages import docs as docs_stage

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _copy_repo(dest: Path, items=("README.md", "docs", "config", "checkpoints", "profiles")) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for item in items:
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / item)
    return dest


def _check(root: Path, capsys) -> tuple[int, str]:
    rc = docs_stage.main(["--root", str(root), "--check"])
    return rc, capsys.readouterr().out


def _block(text: str, spec: str) -> str:
    return text[text.index(f"<!-- generated: {spec} -->"):].split("<!-- end generated -->")[0]


def test_docs_committed_pages_equal_what_strdiffusion_docs_makes():
    stale = docs.regenerate(ROOT)
    assert not stale, {str(page): changed for page, (_, _, changed) in stale.items()}
    pages = {page.relative_to(ROOT).as_posix() for page in docs.pages(ROOT) if docs.BLOCK.search(page.read_text())}
    assert {"README.md", "docs/results.md", "checkpoints/laptop/README.md"} <= pages, pages


def test_docs_check_fails_on_an_edited_number_and_regenerating_restores_it(tmp_path, capsys):
    root = _copy_repo(tmp_path / "repo")
    assert _check(root, capsys)[0] == 0
    readme = root / "README.md"
    text = readme.read_text()
    spec = re.search(r"<!-- generated: (table [^>]*?) -->", text)[1]
    block = _block(text, spec)
    number = re.search(r"\| (\d\d\.\d\d) \|", block)[1]  # a PSNR cell of the default's table
    edited = str(round(float(number) + 0.01, 2))
    readme.write_text(text.replace(block, block.replace(f"| {number} |", f"| {edited} |", 1)))
    rc, out = _check(root, capsys)
    assert rc == 1 and "README.md" in out and spec in out and f"+| " in out, out
    assert docs_stage.main(["--root", str(root)]) == 0
    assert readme.read_text() == text  # the committed page again
    # a number edited in the results file reaches the page (and makes the committed page stale)
    run = spec.split()[1]
    results = root / "docs" / "results" / f"{run}.csv"
    rows = list(csv.DictReader(results.open()))
    row = next(r for r in rows if r["metric"] == "psnr" and r["method"] == "strdiffusion")
    row["value"] = "31.42"
    with results.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    assert _check(root, capsys)[0] == 1
    assert docs_stage.main(["--root", str(root)]) == 0
    assert "31.42" in _block(readme.read_text(), spec) and "31.42" not in text


def test_docs_numbers_that_restate_a_config_follow_the_config(tmp_path, capsys):
    root = _copy_repo(tmp_path / "repo")
    laptop = root / "config" / "laptop.yaml"
    config = yaml.safe_load(laptop.read_text())
    config["train"]["net_iterations"]["critic"] = 2345
    laptop.write_text(yaml.safe_dump(config))
    rc, out = _check(root, capsys)
    assert rc == 1 and "presets" in out, out
    docs_stage.main(["--root", str(root)])
    row = next(line for line in (root / "README.md").read_text().splitlines() if line.startswith("| `config/laptop.yaml`"))
    assert row.split(" | ")[3] == "2,345", row  # the critic's column


def test_docs_a_missing_run_is_one_line_naming_the_file(tmp_path):
    root = _copy_repo(tmp_path / "repo")
    (root / "docs" / "extra.md").write_text("<!-- generated: table no_such_run -->\n<!-- end generated -->\n")
    with pytest.raises(UserError, match=r"runs\.csv: no run 'no_such_run'|no_such_run\.csv: results file not found"):
        docs.regenerate(root)


def test_docs_readme_is_a_short_guide_that_opens_with_the_two_commands_and_the_default_table():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 220, len(lines)
    head = "\n".join(lines[:40])
    assert "make reproduce" in head and "make test" in head
    assert "<!-- generated: table default" in head and "| StrDiffusion |" in head and "Mean-colour fill" in head
    for page in ("configuration", "method", "reproduction", "results", "development"):
        assert f"(docs/{page}.md" in "\n".join(lines), page


def test_docs_speak_of_the_project_alone():
    pattern = re.compile(r"issue ?#?[0-9]|spec §|was lent|were lent", re.I)
    found = []
    for top in ("README.md", "docs", "strdiffusion", "workflow", "config"):
        paths = [ROOT / top] if (ROOT / top).is_file() else sorted((ROOT / top).rglob("*"))
        for path in paths:
            if path.is_file() and path.suffix in (".md", ".py", ".smk", ".yaml", ".rst", ".csv", ""):
                found += [f"{path.relative_to(ROOT)}: {line.strip()}" for line in path.read_text(errors="replace")
                          .splitlines() if pattern.search(line)]
    assert not found, "\n".join(found)


# ---- every command of the README's fenced blocks ---------------------------------------------------------


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = re.split(r"\s+#", line)[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def _readme_files(work: Path) -> None:
    """The YAML blocks that name their file (first line `# name.yaml`) are written there, as the reader would."""
    text = (ROOT / "README.md").read_text()
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        first = block.splitlines()[0]
        if re.fullmatch(r"# [\w.-]+\.yaml", first):
            (work / first[2:]).write_text(block)


def _images(folder: Path, n: int = 3, mask: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if mask:
            array = np.zeros((64, 64), np.uint8)
            array[8:40, 8:8 + 6 * (i + 2)] = 255  # white = hole
        else:
            array = np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / f"{i}.png")


def _stand_ins(work: Path, configfiles: list[str]) -> None:
    """Stand-in files where the merged configs expect the user's data, masks and checkpoints (a dry run needs
    them to exist; it plans every job from the config)."""
    config = docs._config(work, "+".join(configfiles) if configfiles else "config/config.yaml")
    for name in config.get("run_datasets") or list(config["datasets"]):
        ds = config["datasets"][name]
        for key in ("path", "test_path"):
            if ds.get(key) and not (work / ds[key]).exists():
                _images(work / ds[key])
        for key in ("train_list", "test_list"):
            if ds.get(key) and not (work / ds[key]).exists():
                (work / ds[key]).parent.mkdir(parents=True, exist_ok=True)
                (work / ds[key]).write_text("0.png\n1.png\n" if key == "train_list" else "2.png\n")
        for key in ("source", "train_source", "nvidia_source"):
            folder = ds["masks"].get(key)
            if folder and not (work / folder).exists():
                _images(work / folder, mask=True)
    for path in config["checkpoints"].values():
        if path and not (work / path).exists():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_bytes(b"stand-in")


def _as_check(argv: list[str], work: Path) -> list[str]:
    """The command in a form that runs from a fresh clone: make and snakemake as dry runs, strdiffusion for
    real on small inputs."""
    tool = argv[0]
    if tool == "make":
        return ["make", "-n", *argv[1:]]
    if tool == "snakemake":
        configfiles = []
        if "--configfile" in argv:
            i = argv.index("--configfile") + 1
            while i < len(argv) and not argv[i].startswith("-"):
                configfiles.append(argv[i])
                i += 1
        _stand_ins(work, configfiles)
        return [str(BIN / "snakemake"), *(["-n"] if "-n" not in argv else []), *argv[1:]]
    if tool == "strdiffusion":
        for option in ("--image", "--mask"):
            if option in argv and not (work / argv[argv.index(option) + 1]).exists():
                path = work / argv[argv.index(option) + 1]
                _images(path.parent / "_tmp", n=1, mask=option == "--mask")
                (path.parent / "_tmp" / "0.png").rename(path)
        return [str(BIN / "strdiffusion"), *argv[1:]]
    raise AssertionError(f"README command '{' '.join(argv)}': no way to check it here; add one to {__file__}")


@pytest.mark.slow
def test_docs_every_readme_command_runs(tmp_path):
    work = _copy_repo(tmp_path / "clone", ("Snakefile", "workflow", "config", "checkpoints", "profiles", "Makefile",
                                           "requirements.txt", "pyproject.toml", "README.md"))
    _readme_files(work)
    profile = work / "profiles" / "slurm" / "config.yaml"  # filled in first, as the README asks
    profile.write_text(re.sub(r"CHANGE_ME_(\w+)", r"my_\1", profile.read_text()))
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    commands = _readme_commands()
    assert any(c.startswith("strdiffusion inpaint") for c in commands) and len(commands) >= 8, commands
    for command in commands:
        argv = _as_check(shlex.split(command), work)
        res = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{command}\n{(res.stdout + res.stderr)[-3000:]}"
    assert (work / "filled.png").is_file()


@pytest.mark.slow
def test_docs_job_counts_equal_a_dry_run_of_the_config():
    rows = list(csv.DictReader((ROOT / docs.RESULTS / "jobs_places2.csv").open()))
    measured, _ = docs.count_jobs(ROOT, "config/paper/places2.yaml")
    assert measured == rows


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in page.read_text().splitlines() if line.startswith("#") and not line.startswith("#!")}


def test_docs_links_between_pages_resolve():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "checkpoints/laptop/README.md"]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_docs_readme_table_has_every_row_of_the_default_with_the_tables_bold(tmp_path):
    """The README's table lists every row of config/config.yaml's run, and marks bold exactly the cells the run's
    own `results/tables/builtin.md` marks (strdiffusion.reporting.tables.render from the same long table)."""
    import pandas as pd

    from strdiffusion.reporting.tables import METHOD_NAMES, render

    text = (ROOT / "README.md").read_text()
    spec = re.search(r"<!-- generated: (table default[^>]*?) -->", text)[1]
    rows = [line for line in _block(text, spec).splitlines() if line.startswith("| ") and "---" not in line][1:]
    names = [row.split(" | ")[0][2:] for row in rows]
    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert names == [METHOD_NAMES[m] for m in default["methods"]], names

    long = pd.read_csv(ROOT / docs.RESULTS / f"{spec.split()[1]}.csv", dtype={"bin": str})
    methods, bins = list(dict.fromkeys(long.method)), list(dict.fromkeys(long[long.metric == "psnr"].bin))
    md, _ = render(long, {}, methods, bins, ["psnr"], "builtin")
    run_rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:len(methods) + 1]

    def bold(lines):
        return {(line.split(" | ")[0][2:], b) for line in lines
                for b, cell in zip(bins, line.strip(" |").split(" | ")[1:]) if cell.startswith("**")}

    assert bold(rows) == bold(run_rows) and len(bold(rows)) >= len(bins), (bold(rows), bold(run_rows))
    assert ("Biharmonic (scikit-image)", "10-20") in bold(rows)  # the best row need not be a diffusion row


def _paragraphs(page: Path) -> list[str]:
    """A page's paragraphs (blank-line separated, code blocks left out), each with its whitespace collapsed."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if len(p.strip()) > 40]


def test_docs_no_paragraph_appears_twice():
    """Not word for word, nor inside another paragraph (a copy under a bold lead-in)."""
    found = [(page.name, paragraph) for page in sorted((ROOT / "docs").glob("*.md")) for paragraph in _paragraphs(page)]
    twice = [f"{page} (also in {other}): {paragraph[:100]}" for i, (page, paragraph) in enumerate(found)
             for j, (other, text) in enumerate(found) if i != j and len(paragraph) >= 80 and paragraph in text
             and (paragraph != text or i > j)]
    assert not twice, "\n".join(twice)
