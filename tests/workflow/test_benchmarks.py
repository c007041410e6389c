"""The benchmark tool runs from the command line and reports the batched sampler against the reference order."""
import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_benchmark_sampler_section_runs_and_reports_identity(tmp_path, request):
    repo = Path(request.config.rootpath)
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "env,sampler", "--sampler-T", "4",
                          "--sampler-batch", "3", "--device", "cpu", "--out", str(out)], cwd=repo, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["configs"]["tiny"]["nf"] == 8  # the embedded default's networks (config/config.yaml)
    batched = [r for r in result["sampler"] if r["sampler"] == "strdiffusion (batched)"]
    reference = [r for r in result["sampler"] if r["sampler"] == "strdiffusion (reference order)"]
    assert [r["format"] for r in batched] == ["nchw", "cl"] and len(reference) == 2
    for b, r in zip(batched, reference):
        assert r["identical_outputs"] and r["same_call_counts"]
        # the reported speedup is the ratio of the two measured times, and the identity is the one measured
        assert b["speedup_vs_reference_order"] == r["seconds"] / b["seconds"]
        assert b["identical_to_reference_order"] is r["identical_outputs"] is True
        assert b["max_abs_diff_vs_reference_order"] == r["max_abs_diff_vs_batched"] == 0.0
        assert r["critic_calls"] > b["critic_calls"]  # the reference also scores D_n at steps without trials
    summary = result["summary"]
    assert summary["sampler_speedup_tiny_64px_T4_B3_cl"]["bit_identical"] is True
    assert summary["h100_paper_T100_seconds_per_256px_image"]["measured"] is None
    assert "batched / reference order" in res.stdout and "targets (never asserted)" in res.stdout


@pytest.mark.slow
def test_benchmark_rejects_unknown_section(request):
    res = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "fowrard"], cwd=request.config.rootpath,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "unknown sections" in res.stderr


@pytest.mark.slow
def test_scale_rehearsal_reports_every_stage(tmp_path, request):
    """The Places2 rehearsal at 0.05 % (18 test images; one row, one bin) runs the real DAG and reports each stage."""
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\n## Other section\n\nkept\n")
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "scale", "--fraction", "0.05",
                          "--scale-rows", "1", "--scale-bins", "1", "--scale-readme", str(readme), "--device", "cpu",
                          "--out", str(out)],
                         cwd=request.config.rootpath, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    from benchmarks.scale import STAGES

    run = json.loads(out.read_text())["scale"]["runs"][0]
    assert run["n_test"] == 18
    for stage in STAGES:
        row = run["stages"][stage]
        assert row["seconds"] > 0 and row["jobs"] >= 1 and row["files"] >= 1 and row["peak_rss_mb"] > 0, (stage, row)
    assert run["stages"]["data preparation"]["files"] >= 18 and run["stages"]["inpainting"]["files"] >= 18
    text = readme.read_text()
    assert "## Other section\n\nkept" in text and "## Places2-size rehearsal" in text
    table = text[text.index("| stage |"):]
    assert all(f"| {stage} | " in table for stage in STAGES)
