"""profiles/slurm against a live one-node SLURM cluster on 127.0.0.1 (tests/slurm/slurm_cluster.py): the workflow's
chain through sbatch, a failing rule, a cancelled job, GPU routing; with and without job accounting.

Root with Debian's slurm-wlm and munge (plus slurmdbd and mariadb-server for accounting) is needed; otherwise every
test here is skipped with the reason. The profile is used as shipped except for a test overlay, a copy of it with
the CHANGE_ME partitions and account replaced by the test cluster's, and, passed on the command line, a short first
status check (3 s instead of the plugin's 40 s) and two jobs at once (the node claims 16 CPUs on a 2-core machine).
"""
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slurm_cluster  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
PLACEHOLDERS = {"CHANGE_ME_cpu_partition": "cpu", "CHANGE_ME_gpu_partition": "gpu", "CHANGE_ME_account": "account"}
FAIL_WITHIN_S = 180  # a failing rule ends the run within 3 minutes, with and without accounting
TEST_ARGS = ["--slurm-init-seconds-before-status-checks", "3", "--jobs", "2"]
# A failing rule is tried once (the profile's retries are the cancelled-job test's subject): measured with the
# shipped settings instead (first status check after 40 s, retries 1), the run ended after 152 s without accounting.
ONCE = ["--retries", "0"]

# The default workflow's chain, reduced: one classical and one diffusion method (its network trained on the GPU
# partition), one hole-ratio bin, two test images, tiny networks; metric weights never downloaded.
REDUCED = {
    "seed": 0,
    "image_size": 32,
    "datasets": {"builtin": {"source": "builtin", "n_test": 2, "masks": {
        "protocol": "lama_medium", "bins": [[0.1, 0.2]], "per_bin": 2, "train_pool": 8}}},
    "methods": ["telea", "irsde"],
    "metrics": {"per_image": ["psnr", "ssim", "l1"], "per_set": ["fid"], "fetch_weights": False},
    "checkpoints": {"structure": "", "texture": "", "critic": "", "irsde": ""},
    "model": {"nf": 4, "depth": 2, "critic_ngf": 4},
    "sde": {"T": 6},
    "train": {"iterations": 4, "batch_size": 2, "checkpoint_every": 2, "lr_milestones": [0.75]},
    "sampling": {"shard_size": 2, "batch_size": 2},
}

# one worker holds every cluster of this file (they share /etc/slurm, one at a time) while the others run the rest
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]


def _start(accounting: bool, **settings) -> slurm_cluster.SlurmCluster:
    reason = slurm_cluster.unavailable_reason(accounting)
    if reason:
        pytest.skip(reason)
    # finished jobs stay listed by squeue for the whole file (MinJobAge): the tests count a run's jobs after it ends,
    # and on a loaded machine a run's first jobs end many minutes before its last
    return slurm_cluster.SlurmCluster(accounting=accounting, min_job_age=3600, **settings).start()


@pytest.fixture(scope="class")
def accounting_cluster():
    c = _start(accounting=True)
    yield c
    c.stop()  # every daemon by PID, also after a failed test
    c.cleanup()


@pytest.fixture(scope="module")
def cluster():
    """The cluster without accounting, for the profile's tests and the faults (started after the accounting
    cluster has stopped: the file's first class). A job that ended its work by its 1-minute limit may finish its
    Snakemake wrap-up in the minute after (OverTimeLimit): on this 2-core machine under load, Snakemake's own
    start and end take 30-40 s of a 1-minute slot. slurmctld declares a silent node down after 10 s."""
    c = _start(accounting=False, slurmd_timeout=10, over_time_limit=1)
    yield c
    c.stop()
    c.cleanup()
    for name, figure in FIGURES.items():
        print(f"fault figure: {name}: {figure}")


def _mine(cluster, work: Path) -> list[dict]:
    """The cluster's jobs submitted from ``work`` (tests share the cluster, some side by side)."""
    return [j for j in cluster.jobs() if Path(j["workdir"]).resolve() == work.resolve()]


def overlay_profile(dest: Path, cluster: slurm_cluster.SlurmCluster, account: str | None = None) -> Path:
    """The shipped profile with only its placeholders replaced: partitions and account of the test cluster."""
    text = PROFILE.read_text()
    values = {"cpu": cluster.cpu_partition, "gpu": cluster.gpu_partition,
              "account": cluster.account if account is None else account}
    for placeholder, key in PLACEHOLDERS.items():
        assert placeholder in text, f"profiles/slurm lost its placeholder {placeholder}"
        text = text.replace(placeholder, values[key])
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(text)
    return dest


def _env(torch_home: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    # jobs find the test environment's python (and snakemake) first, whatever the rules do about PATH
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    if torch_home is not None:
        env["TORCH_HOME"] = str(torch_home)
    return env


def run_snakemake(workdir: Path, args: list[str], timeout: float, env: dict | None = None):
    """Run Snakemake; return (result, seconds). A run past ``timeout`` is killed and fails the test (the hang)."""
    start = time.monotonic()
    proc = subprocess.Popen([SNAKEMAKE, *args], cwd=workdir, env=env or _env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # SIGTERM may not stop a Snakemake waiting on job states
        out, _ = proc.communicate()
        pytest.fail(f"snakemake {' '.join(args)} still running after {timeout:.0f} s:\n{out[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, ""), time.monotonic() - start


def _failure(res, cluster, workdir: Path) -> str:
    logs = "\n".join(f"== {p}\n{p.read_text(errors='replace')[-1500:]}"
                     for p in sorted((workdir / "logs").rglob("*.log"))[-4:]) if (workdir / "logs").exists() else ""
    slurm_logs = "\n".join(f"== {p}\n{p.read_text(errors='replace')[-1500:]}"
                           for p in sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))[-3:]) \
        if (workdir / ".snakemake" / "slurm_logs").exists() else ""
    return f"{res.stdout[-4000:]}\n{logs}\n{slurm_logs}\n{cluster.log_tails(800)}"


def _workflow_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    shutil.copy(REPO / "Snakefile", path / "Snakefile")
    shutil.copytree(REPO / "workflow", path / "workflow")
    shutil.copytree(REPO / "config", path / "config")
    (path / "reduced.yaml").write_text(yaml.safe_dump(REDUCED))
    return path


def _toy_workflow(path: Path, body: str) -> Path:
    path.mkdir(parents=True)
    (path / "Snakefile").write_text(body)
    return path


FAILING = '''rule all:
    input: "out.txt"

rule broken:
    output: "out.txt"
    log: "logs/broken.log"
    shell: "echo about to fail > {log}; exit 3"
'''

def _hold_then_finish(rule: str, first_hold: int) -> str:
    """A workflow whose one job sleeps ``first_hold`` seconds on its first attempt (time for a fault to hit it)
    and finishes at once when retried."""
    return f'''rule all:
    input: "out.txt"

rule {rule}:
    output: "out.txt"
    log: "logs/{rule}.log"
    resources: hold=lambda wildcards, attempt: {first_hold} if attempt == 1 else 0
    shell: "echo attempt {{resources.hold}} > {{log}}; sleep {{resources.hold}}; echo done > {{output}}"
'''


CANCELLED = _hold_then_finish("long", 300)  # the first attempt waits to be cancelled


class TestRealSlurmWithAccounting:
    def test_real_slurm_failing_rule_ends_run_with_accounting(self, accounting_cluster, tmp_path):
        cluster = accounting_cluster
        assert subprocess.run(["sacct", "-X"], capture_output=True).returncode == 0
        work = _toy_workflow(tmp_path / "fail", FAILING)
        profile = overlay_profile(tmp_path / "profile", cluster)
        res, seconds = run_snakemake(work, ["--profile", str(profile), *TEST_ARGS, *ONCE], timeout=FAIL_WITHIN_S)
        assert res.returncode != 0, res.stdout[-3000:]
        assert "Error in rule broken" in res.stdout and "FAILED" in res.stdout, res.stdout[-3000:]
        # with accounting the status comes from squeue too; sacct still knows the job
        assert "FAILED" in subprocess.run(["sacct", "-X", "-n", "-o", "State"], capture_output=True, text=True).stdout
        print(f"failing rule, accounting: run ended after {seconds:.0f} s")

    def test_real_slurm_account_placeholder_is_rejected_by_name(self, accounting_cluster, tmp_path):
        """A profile whose account was not filled in stops at the first submission, naming the placeholder."""
        cluster = accounting_cluster
        work = _toy_workflow(tmp_path / "placeholder", FAILING)
        profile = overlay_profile(tmp_path / "profile", cluster, account="CHANGE_ME_account")
        before = len(cluster.jobs())
        res, _ = run_snakemake(work, ["--profile", str(profile), *TEST_ARGS, *ONCE], timeout=FAIL_WITHIN_S)
        assert res.returncode != 0
        assert "CHANGE_ME_account" in res.stdout and "invalid" in res.stdout, res.stdout[-3000:]
        assert len(cluster.jobs()) == before  # nothing was submitted


# the faults' time-limited run (about 4 minutes, mostly waiting on its 1-minute slots) goes on in the background
# on the same cluster meanwhile; each test counts only the jobs submitted from its own folder
@pytest.mark.usefixtures("time_limited_run")
class TestRealSlurmWithoutAccounting:
    def test_real_slurm_workflow_table_equals_local_run_and_gpu_rules_get_gpus(self, cluster, tmp_path):
        torch_home = tmp_path / "torch_home"  # empty and shared: the n/a footnote names the same folder
        (torch_home / "hub" / "checkpoints").mkdir(parents=True)
        env = _env(torch_home)
        profile = overlay_profile(tmp_path / "profile", cluster)
        on_slurm = _workflow_dir(tmp_path / "slurm")
        # the same config, locally and at the same time (the SLURM run mostly waits), with the profile's threads
        # per rule (tensor maths may depend on the thread count)
        set_threads = yaml.safe_load(PROFILE.read_text())["set-threads"]
        local = _workflow_dir(tmp_path / "local")
        local_run = subprocess.Popen(
            [SNAKEMAKE, "--cores", "8", "--set-threads", *[f"{r}={n}" for r, n in set_threads.items()],
             "--configfile", "reduced.yaml"], cwd=local, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
        try:
            res, seconds = run_snakemake(on_slurm, ["--profile", str(profile), *TEST_ARGS, "--configfile",
                                                    "reduced.yaml"], timeout=900, env=env)
            assert res.returncode == 0, _failure(res, cluster, on_slurm)
            local_out, _ = local_run.communicate(timeout=900)
        finally:
            if local_run.poll() is None:
                os.killpg(local_run.pid, 9)
                local_run.wait()
        assert local_run.returncode == 0, local_out[-3000:]
        jobs = _mine(cluster, on_slurm)
        rules = {j["comment"].split("_wildcards_")[0].removeprefix("rule_"): j for j in jobs}
        assert {"prepare_data", "train_irsde", "inpaint_shard", "image_metrics", "table"} <= set(rules), jobs
        assert all(j["state"] == "COMPLETED" for j in jobs), jobs
        for suffix in ("md", "csv", "tex"):
            slurm_table = (on_slurm / "results" / "tables" / f"builtin.{suffix}").read_bytes()
            assert slurm_table == (local / "results" / "tables" / f"builtin.{suffix}").read_bytes(), suffix
        assert b"| IR-SDE (no structure) |" in (on_slurm / "results" / "tables" / "builtin.md").read_bytes()

        # GPU rules went to the GPU partition with the GPUs the profile asks for; the others to the CPU partition
        shipped = yaml.safe_load(PROFILE.read_text())
        for job in jobs:
            rule = job["comment"].split("_wildcards_")[0].removeprefix("rule_")
            wanted = shipped["set-resources"].get(rule, {})
            if wanted.get("gpu"):
                assert job["partition"] == cluster.gpu_partition, job
                assert f"gpu:{wanted['gpu']}" in job["tres-per-job"] + job["tres-per-node"], job
            else:
                assert job["partition"] == cluster.cpu_partition, job
                assert "gpu" not in job["tres-per-job"] + job["tres-per-node"], job
        gpu_rules = {r for r, j in rules.items() if j["partition"] == cluster.gpu_partition}
        assert {"train_irsde", "inpaint_shard"} <= gpu_rules
        print(f"reduced workflow through SLURM: {seconds:.0f} s, {len(jobs)} jobs")

    def test_real_slurm_failing_rule_ends_run_without_accounting(self, cluster, tmp_path):
        sacct = subprocess.run(["sacct", "-X"], capture_output=True, text=True)
        assert sacct.returncode != 0 and "accounting storage is disabled" in sacct.stderr  # the hang's condition
        work = _toy_workflow(tmp_path / "fail", FAILING)
        profile = overlay_profile(tmp_path / "profile", cluster)
        res, seconds = run_snakemake(work, ["--profile", str(profile), *TEST_ARGS, *ONCE], timeout=FAIL_WITHIN_S)
        assert res.returncode != 0, res.stdout[-3000:]
        assert "Error in rule broken" in res.stdout and "FAILED" in res.stdout, res.stdout[-3000:]
        broken = [j for j in _mine(cluster, work) if j["comment"] == "rule_broken"]
        assert len(broken) == 1 and broken[0]["state"] == "FAILED", broken
        print(f"failing rule, no accounting: run ended after {seconds:.0f} s")

    def test_real_slurm_cancelled_job_is_retried_as_profile_says(self, cluster, tmp_path):
        work = _toy_workflow(tmp_path / "cancel", CANCELLED)
        profile = overlay_profile(tmp_path / "profile", cluster)
        proc = subprocess.Popen([SNAKEMAKE, "--profile", str(profile), *TEST_ARGS], cwd=work, env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            end = time.monotonic() + 120
            running = []
            while time.monotonic() < end and not running:
                running = [j for j in _mine(cluster, work) if j["comment"] == "rule_long" and j["state"] == "RUNNING"]
                time.sleep(0.5)
            assert running, f"the job never ran: {_mine(cluster, work)}"
            subprocess.run(["scancel", running[0]["jobid"]], check=True)
            out, _ = proc.communicate(timeout=FAIL_WITHIN_S)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
        retries = yaml.safe_load(PROFILE.read_text())["retries"]
        long_jobs = {j["jobid"]: j["state"] for j in _mine(cluster, work) if j["comment"] == "rule_long"}
        assert long_jobs[running[0]["jobid"]] == "CANCELLED", long_jobs
        assert f"SLURM-job '{running[0]['jobid']}' failed, SLURM status is: 'CANCELLED'" in out, out[-3000:]
        if retries >= 1:  # the profile retries: a second job finishes the rule and the run succeeds
            assert proc.returncode == 0, out[-3000:]
            assert sorted(long_jobs.values()) == ["CANCELLED", "COMPLETED"], long_jobs
            assert (work / "out.txt").read_text() == "done\n"
        else:
            assert proc.returncode != 0 and len(long_jobs) == 1, out[-3000:]


# ---------------------------------------------------------------------------------------------------- faults
# The reduced chain with a training of some minutes' work at 1 thread; a driver, a job or the node's slurmd is
# killed, or the disk fills, and the run must recover (or end with one line) without losing saved work.
# The time-limited training's iteration count is set from the speed measured on this machine at the time (the
# `reference` fixture): about TIME_LIMITED_WORK_S seconds of training, so that it needs several 1-minute slots
# however fast or loaded the machine is.
FAULT = {**REDUCED, "train": {"iterations": 360, "batch_size": 2, "checkpoint_every": 120, "lr_milestones": [0.75]}}
TIME_LIMITED_WORK_S = 80
CALIBRATION_ITERATIONS = 60
PREEMPT = {**REDUCED, "train": {"iterations": 240, "batch_size": 2, "checkpoint_every": 120, "lr_milestones": [0.75]}}
MODEL = "results/builtin/models/irsde.pt"
STATE = "results/builtin/models/irsde_state"
INPUTS = ("results/builtin/data", "results/builtin/structure", "results/builtin/masks", ".snakemake/metadata")
FIGURES: dict[str, str] = {}  # printed when the cluster stops: docs/reliability.md quotes them


def fault_profile(dest: Path, cluster, runtime: int | None = None) -> Path:
    """The test overlay, with the training on one thread (the local reference's count) on the CPU partition (the
    node's one fake GPU would make it wait for the inpainting jobs) and, when given, a training time limit of
    ``runtime`` minutes."""
    overlay_profile(dest, cluster)
    profile = yaml.safe_load((dest / "config.yaml").read_text())
    profile["set-threads"]["train_irsde"] = 1
    profile["set-resources"]["train_irsde"].update(cpus_per_task=1, gpu=0, slurm_partition=cluster.cpu_partition)
    if runtime is not None:
        profile["set-resources"]["train_irsde"]["runtime"] = runtime
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest


def _fault_workdir(path: Path, reference: Path, config: dict) -> Path:
    """A workflow folder holding the reference run's data, structure and masks (not its models or results)."""
    _workflow_dir(path)
    (path / "reduced.yaml").write_text(yaml.safe_dump(config))
    for rel in INPUTS:
        if (reference / rel).exists():
            shutil.copytree(reference / rel, path / rel)
    return path


def _lock_log(work: Path) -> list[tuple[str, str, str]]:
    """(time, event, holder) of every line of the training state's writer.log."""
    rows = []
    for line in (work / STATE / "writer.log").read_text().splitlines():
        stamp, rest = line.split(" ", 1)
        for event in ("taken by", "released by", "took over the stale lock of", "refused to"):
            if rest.startswith(event):
                rows.append((stamp, event.split()[0], rest[len(event) + 1:]))
    return rows


def _no_two_writers(rows) -> None:
    """Every 'taken' is followed by its holder's release (or a take-over of a dead holder) before the next one."""
    holding = None
    for _, event, who in rows:
        pid = who.split(" on ")[0]
        if event == "taken":
            assert holding is None, f"two writers: {holding} and {who}\n{rows}"
            holding = pid
        elif event == "released":
            assert holding == pid.split(" (")[0], rows
            holding = None
        elif event == "took":
            holding = None


def _same_weights(a: Path, b: Path) -> None:
    import torch

    sa, sb = (torch.load(p, weights_only=True)["state_dict"] for p in (a, b))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _wait_for(check, timeout: float, what: str, interval: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"{what} not seen within {timeout:.0f} s")


def _rule_jobs(cluster, rule: str, work: Path) -> list[dict]:
    return [j for j in _mine(cluster, work) if j["comment"].split("_wildcards_")[0] == f"rule_{rule}"]


def _local_command(*targets: str) -> list[str]:
    """The local (no cluster) run of the reduced chain in its work folder, up to ``targets`` (all when none)."""
    return [SNAKEMAKE, *targets, "--cores", "2", "--set-threads", "train_irsde=1", "--configfile", "reduced.yaml"]


def _local_snakemake(work: Path, torch_home: Path, *targets: str) -> None:
    res = subprocess.run(_local_command(*targets), cwd=work, env=_env(torch_home), capture_output=True, text=True,
                         timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


class _Reference:
    """The local run without faults that the faulted runs must equal, running in the background while the other
    tests on the cluster use its inputs: the folder with its data, structure and masks (``inputs``), the speed measured
    before it started, and :meth:`finished`, the whole run's folder once it has ended."""

    def __init__(self, work: Path, inputs: Path, torch_home: Path, config: dict, per_iteration: float,
                 state_size: int):
        self.work, self.inputs, self.torch_home, self.config = work, inputs, torch_home, config
        self.per_iteration, self.state_size = per_iteration, state_size
        self.start = time.monotonic()
        self.proc = subprocess.Popen(_local_command(), cwd=work, env=_env(torch_home), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def finished(self) -> Path:
        if self.proc is not None:
            out, _ = self.proc.communicate(timeout=1200)
            assert self.proc.returncode == 0, out[-3000:]
            self.proc = None
            FIGURES["local reference run"] = (
                f"{time.monotonic() - self.start:.0f} s (beside the other tests on the cluster); {self.per_iteration:.3f} s "
                f"per iteration, so {self.config['train']['iterations']} iterations for the time-limited training")
        return self.work

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The reduced chain's inputs made locally, the training speed measured on them, then the whole chain started
    locally in the background, its training long enough for several 1-minute slots at that speed."""
    from strdiffusion.models.checkpoints import load_checkpoint

    torch_home = tmp_path_factory.mktemp("torch_home")
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    root = tmp_path_factory.mktemp("faults")
    work = _workflow_dir(root / "local")
    (work / "reduced.yaml").write_text(yaml.safe_dump(FAULT))
    _local_snakemake(work, torch_home, "results/builtin/data/train", "results/builtin/data/test",
                     "results/builtin/structure/train", "results/builtin/structure/test", "results/builtin/masks/pool",
                     "results/builtin/masks/pairs.csv")
    inputs = _fault_workdir(root / "inputs", work, FAULT)  # a still copy: the background run goes on writing
    calibration = {**FAULT, "train": {**FAULT["train"], "iterations": CALIBRATION_ITERATIONS}}
    probe = _fault_workdir(root / "calibration", inputs, calibration)
    _local_snakemake(probe, torch_home, MODEL)
    per_iteration = load_checkpoint(probe / MODEL, kind="irsde")[1]["train_seconds"] / CALIBRATION_ITERATIONS
    every = FAULT["train"]["checkpoint_every"]
    iterations = every * max(3, math.ceil(TIME_LIMITED_WORK_S / (per_iteration * every)))
    config = {**FAULT, "train": {**FAULT["train"], "iterations": int(iterations)}}
    (work / "reduced.yaml").write_text(yaml.safe_dump(config))
    ref = _Reference(work, inputs, torch_home, config, per_iteration, (probe / STATE / "state.pt").stat().st_size)
    yield ref
    ref.stop()


class _TimeLimitedRun(threading.Thread):
    """The chain on SLURM with a 1-minute training time limit, in the background beside the other tests on the
    cluster: the driver is SIGKILLed while the first training job runs and started again (--unlock, then the same
    command; the profile reruns incomplete jobs). :meth:`result` waits for it and the local reference."""

    def __init__(self, cluster, reference: _Reference, root: Path):
        super().__init__(daemon=True)
        self.cluster, self.reference = cluster, reference
        self.work = _fault_workdir(root / "slurm", reference.inputs, reference.config)
        profile = fault_profile(root / "profile", cluster, runtime=1)
        self.args = ["--profile", str(profile), *TEST_ARGS, "--configfile", "reduced.yaml"]
        self.proc: subprocess.Popen | None = None
        self.outcome: dict | None = None
        self.error: BaseException | None = None

    def _driver(self) -> subprocess.Popen:
        self.proc = subprocess.Popen([SNAKEMAKE, *self.args], cwd=self.work, env=_env(self.reference.torch_home),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        return self.proc

    def run(self) -> None:
        try:
            self.outcome = self._run()
        except BaseException as exc:  # pytest.fail included: raised again by result()
            self.error = exc

    def _run(self) -> dict:
        work, start = self.work, time.monotonic()
        first = self._driver()
        running = _wait_for(lambda: [j for j in _rule_jobs(self.cluster, "train_irsde", work)
                                     if j["state"] == "RUNNING"], 300, "a running training job")
        _wait_for(lambda: (work / STATE / "writer.log").exists(), 120, "the training's lock")
        first.kill()  # SIGKILL: no chance to cancel its jobs
        killed = time.monotonic()
        first.communicate()
        unlock = subprocess.run([SNAKEMAKE, *self.args, "--unlock"], cwd=work, env=_env(self.reference.torch_home),
                                capture_output=True, text=True)
        assert unlock.returncode == 0, unlock.stdout[-2000:] + unlock.stderr[-2000:]
        second = self._driver()
        try:
            out, _ = second.communicate(timeout=1200)
        except subprocess.TimeoutExpired:
            pytest.fail("the restarted driver still runs after 1200 s")
        res = subprocess.CompletedProcess(second.args, second.returncode, out, "")
        seconds, after_kill = time.monotonic() - start, time.monotonic() - killed
        local = self.reference.finished()
        return {"work": work, "local": local, "res": res, "first_job": running[0]["jobid"],
                "seconds": seconds, "after_kill": after_kill}

    def result(self) -> dict:
        self.join()
        if self.error is not None:
            raise self.error
        return self.outcome

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
        self.reference.stop()
        self.join(timeout=60)


@pytest.fixture(scope="module")
def time_limited_run(cluster, reference, tmp_path_factory):
    run = _TimeLimitedRun(cluster, reference, tmp_path_factory.mktemp("time_limited"))
    run.start()
    yield run
    run.stop()


class TestRealSlurmFaults:
    def test_real_slurm_fault_scancel_resumes_from_state_saved_on_signal(self, cluster, reference, tmp_path):
        work = _fault_workdir(tmp_path / "slurm", reference.inputs, PREEMPT)
        profile = fault_profile(tmp_path / "profile", cluster)
        proc = subprocess.Popen([SNAKEMAKE, MODEL, "--profile", str(profile), *TEST_ARGS, "--configfile",
                                 "reduced.yaml"], cwd=work, env=_env(reference.torch_home), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            # cancelled just after its first checkpoint (its progress line is the checkpoint's last step): the signal
            # reaches it some iterations on, so the state it saves is not a checkpoint's, however fast the job runs
            log, every = work / "logs" / "builtin" / "train_irsde.log", PREEMPT["train"]["checkpoint_every"]
            _wait_for(lambda: log.exists() and f"iteration {every}/" in log.read_text(errors="replace"), 300,
                      "the training's first checkpoint", interval=0.05)
            job = [j for j in _rule_jobs(cluster, "train_irsde", work) if j["state"] == "RUNNING"][0]
            subprocess.run(["scancel", job["jobid"]], check=True)
            cancelled = time.monotonic()
            out, _ = proc.communicate(timeout=600)
            recovered = time.monotonic() - cancelled
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
        assert proc.returncode == 0, out[-4000:]
        rows = _lock_log(work)
        stop = [who for _, event, who in rows if event == "released" and "SIGTERM" in who]
        assert len(stop) == 1, rows
        saved = int(stop[0].split("iteration ")[1].rstrip(")"))
        from strdiffusion.models.checkpoints import load_checkpoint

        resumes = load_checkpoint(work / MODEL, kind="irsde")[1]["resumes"]
        assert resumes[0]["at"] == saved and saved % PREEMPT["train"]["checkpoint_every"] != 0, (resumes, rows)
        FIGURES["scancel"] = (f"job {job['jobid']} cancelled at iteration {saved}, resumed at {resumes[0]['at']} "
                              f"(0 repeated, checkpoint_every {PREEMPT['train']['checkpoint_every']}); "
                              f"{recovered:.0f} s from scancel to the finished training")

    def test_real_slurm_fault_disk_full_during_save_keeps_last_good_state(self, cluster, reference, tmp_path):
        import torch

        torch_home = reference.torch_home
        work = _fault_workdir(tmp_path / "slurm", reference.inputs, PREEMPT)
        # room for one state and a half: the first save fits, the second cannot write its temporary copy
        size = reference.state_size
        (work / STATE).mkdir(parents=True)
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size * 3 // 2 + 65536}", "tmpfs",
                                str(work / STATE)], capture_output=True, text=True)
        if mount.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
        try:
            profile = fault_profile(tmp_path / "profile", cluster)
            res, seconds = run_snakemake(work, [MODEL, "--profile", str(profile), *TEST_ARGS, "--preemptible-retries",
                                                "0", "--configfile", "reduced.yaml"], timeout=600,
                                         env=_env(torch_home))
            assert res.returncode != 0, res.stdout[-3000:]
            log = (work / "logs" / "builtin" / "train_irsde.log").read_text()
            assert log.strip().splitlines()[-1] == (f"error: {STATE}/state.pt: disk full (No space left on device); "
                                                    "free space and re-run"), log[-2000:]
            state = torch.load(work / STATE / "state.pt", weights_only=True)
            every = PREEMPT["train"]["checkpoint_every"]
            assert int(state["iteration"]) == every  # the last good state, whole
            assert not [p for p in (work / STATE).iterdir() if p.name.startswith(".state.pt")]
            assert not (work / MODEL).exists()
        finally:
            subprocess.run(["umount", "-l", str(work / STATE)], check=False)
        FIGURES["disk full"] = (f"run ended in {seconds:.0f} s with the one-line disk-full error; state.pt intact at "
                                f"iteration {every}")

    def test_real_slurm_fault_time_limit_resubmits_until_done_identical(self, cluster, time_limited_run):
        run = time_limited_run.result()
        work, local = run["work"], run["local"]
        assert run["res"].returncode == 0, _failure(run["res"], cluster, work)
        rows = _lock_log(work)
        stops = [who for _, event, who in rows if event == "released" and "SLURM time limit" in who]
        slots = [who for _, event, who in rows if event == "taken"]
        assert len(slots) >= 2 and stops, rows  # the training needed more than one slot and stopped itself
        _same_weights(work / MODEL, local / MODEL)
        for suffix in ("md", "csv", "tex"):
            assert (work / "results" / "tables" / f"builtin.{suffix}").read_bytes() == \
                (local / "results" / "tables" / f"builtin.{suffix}").read_bytes(), suffix
        from strdiffusion.models.checkpoints import load_checkpoint

        resumes = load_checkpoint(work / MODEL, kind="irsde")[1]["resumes"]
        saved_at = [int(w.split("iteration ")[1].rstrip(")")) for w in stops]
        assert [r["at"] for r in resumes if r["at"] in saved_at], resumes
        FIGURES["time limit"] = (f"{len(slots)} training jobs of 1 minute, stops at {saved_at}, resumed at "
                                 f"{[r['at'] for r in resumes]}, whole run {run['seconds']:.0f} s, weights and "
                                 "table identical")

    def test_real_slurm_fault_driver_killed_restart_never_two_writers(self, cluster, time_limited_run):
        run = time_limited_run.result()
        work = run["work"]
        assert run["res"].returncode == 0, _failure(run["res"], cluster, work)
        rows = _lock_log(work)
        _no_two_writers(rows)
        refused = [who for _, event, who in rows if event == "refused"]
        for suffix in ("md", "csv"):
            assert (work / "results" / "tables" / f"builtin.{suffix}").read_bytes() == \
                (run["local"] / "results" / "tables" / f"builtin.{suffix}").read_bytes(), suffix
        FIGURES["driver killed"] = (f"restart to the end {run['after_kill']:.0f} s; {len(refused)} job(s) refused "
                                    f"by the lock while the first driver's job ran; tables identical")


    def test_real_slurm_fault_slurmd_killed_job_retried_or_one_line(self, cluster, time_limited_run, tmp_path):
        time_limited_run.join()  # the last on the cluster: losing the node would hit the background run's jobs
        work = _toy_workflow(tmp_path / "node", NODE_LOST)
        profile = overlay_profile(tmp_path / "profile", cluster)
        proc = subprocess.Popen([SNAKEMAKE, "--profile", str(profile), *TEST_ARGS], cwd=work, env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            _wait_for(lambda: [j for j in _rule_jobs(cluster, "work", work) if j["state"] == "RUNNING"], 120,
                      "a running job")
            cluster.kill_slurmd()
            killed = time.monotonic()
            # slurmctld declares the node down after SlurmdTimeout (10 s) and the job leaves RUNNING
            _wait_for(lambda: "down" in cluster.node_state(), 120, "the node declared down")
            down = time.monotonic() - killed
            cluster.restart_slurmd()
            out, _ = proc.communicate(timeout=NODE_LOST_WITHIN_S)
            ended = time.monotonic() - killed
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
        _wait_for(lambda: cluster.node_state() in ("idle", "mixed", "allocated"), 120, "the node back")
        states = [j["state"] for j in _rule_jobs(cluster, "work", work)]
        if proc.returncode == 0:
            assert (work / "out.txt").read_text() == "done\n"
            outcome = f"completed after the node returned (job states {states})"
        else:
            assert "Error in rule work" in out and ("NODE_FAIL" in out or "FAILED" in out), out[-3000:]
            outcome = "ended with the job's failure reason"
        FIGURES["slurmd killed"] = f"node down after {down:.0f} s; run {outcome} {ended:.0f} s after the kill"

NODE_LOST = _hold_then_finish("work", 60)  # the job sleeps long enough to lose its node
NODE_LOST_WITHIN_S = 300  # the run ends this long after slurmd is killed, either way
