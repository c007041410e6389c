"""A real one-node SLURM cluster on 127.0.0.1 for tests: munge, slurmctld, slurmd and, with accounting, slurmdbd
over a private MariaDB.

Root only (slurmd runs jobs as their user, and SLURM's configuration must sit at /etc/slurm/slurm.conf: the
Snakemake executor strips every SLURM_* variable inside jobs, SLURM_CONF included). Every daemon runs in the
foreground as a child of this process, with its state, logs and sockets in one temporary folder; ``stop()`` ends
each by its PID and puts back whatever /etc/slurm held before. A file lock serialises clusters of concurrent test
runs on one machine, since they share /etc/slurm.

The node offers both partitions the profile names (``cpu``, the default, and ``gpu``) under test names, a fake
``gpu`` GRES (``File=/dev/null``: SLURM sets CUDA_VISIBLE_DEVICES, no device exists) and more CPUs and memory than
the machine has (``SlurmdParameters=config_overrides``), so the profile's requests fit.

Use from the shell to try the profile by hand (see docs/development.md, "A SLURM cluster on one machine"):

    python tests/slurm/slurm_cluster.py [--accounting]     # starts, prints the partitions; Ctrl-C (or kill) stops
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CLUSTER = "strdifftest"
CPU_PARTITION = "test_cpu"
GPU_PARTITION = "test_gpu"
ACCOUNT = "strdifftest"
ETC = Path("/etc/slurm")
LOCK = Path(tempfile.gettempdir()) / "strdiffusion-slurm-cluster.lock"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")
ACCOUNTING_DAEMONS = ("slurmdbd", "mariadbd", "mariadb-install-db", "sacctmgr")


def _which(cmd: str) -> str | None:
    """A command on PATH or in the sbin folders (daemons live there; a non-login root PATH may lack them)."""
    return shutil.which(cmd, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def unavailable_reason(accounting: bool = False) -> str | None:
    """Why a cluster cannot be started here (for pytest.skip), or None."""
    if os.geteuid() != 0:
        return "needs root (slurmd runs jobs as their user; the config must be /etc/slurm/slurm.conf)"
    missing = [d for d in DAEMONS + (ACCOUNTING_DAEMONS if accounting else ()) if _which(d) is None]
    if missing:
        pkgs = "slurm-wlm munge" + (" slurmdbd mariadb-server" if accounting else "")
        return f"SLURM not installed (no {', '.join(missing)}); apt-get install -y {pkgs}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check, timeout: float, logs: list[Path], interval: float = 0.3):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(interval)
    tails = "\n".join(f"== {p}\n{p.read_text(errors='replace')[-2000:]}" for p in logs if p.exists())
    raise RuntimeError(f"test SLURM cluster: {what} not ready after {timeout:.0f} s\n{tails}")


def _ok(*cmd: str) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def job_processes() -> list[int]:
    """PIDs of the processes that run as jobs of a test cluster (SLURM sets SLURM_CLUSTER_NAME in their
    environment; the tests' own processes run without SLURM variables)."""
    mark, pids = f"SLURM_CLUSTER_NAME={CLUSTER}".encode(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:  # gone meanwhile, or not ours to read
                pass
    return pids


class SlurmCluster:
    """One node (``node``), partitions ``cpu_partition`` (default) and ``gpu_partition``, 1 fake GPU."""

    def __init__(self, accounting: bool = False, cpus: int = 16, memory_mb: int = 128000,
                 min_job_age: int = 300, slurmd_timeout: int = 300, over_time_limit: int = 0):
        self.accounting = accounting
        self.cpus, self.memory_mb, self.min_job_age = cpus, memory_mb, min_job_age
        self.slurmd_timeout = slurmd_timeout  # seconds without an answer before slurmctld declares the node down
        self.over_time_limit = over_time_limit  # minutes a job may run past its time limit before it is killed
        self.cpu_partition, self.gpu_partition = CPU_PARTITION, GPU_PARTITION
        self.account = ACCOUNT if accounting else ""
        self.node = "strdiffnode"
        self.dir: Path | None = None
        self._procs: list[tuple[str, subprocess.Popen]] = []
        self._saved: dict[Path, bytes | None] = {}
        self._lock = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> "SlurmCluster":
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self, timeout: float = 90) -> "SlurmCluster":
        reason = unavailable_reason(self.accounting)
        if reason:
            raise RuntimeError(reason)
        self._lock = open(LOCK, "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # another test run's cluster on this machine: wait for its end
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float):
        self.dir = Path(tempfile.mkdtemp(prefix="strdiffusion-slurm-"))
        os.chmod(self.dir, 0o755)
        d = self.dir
        for sub in ("munge", "state", "spool", "log"):
            (d / sub).mkdir(mode=0o755)
        # munge: a private key and socket, so a munged of the host (if any) is left alone
        key = d / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.munge_socket = d / "munge" / "munge.socket"
        self._spawn("munged", ["munged", "--foreground", "--force", f"--key-file={key}",
                                f"--socket={self.munge_socket}", f"--pid-file={d / 'munge' / 'munged.pid'}",
                                f"--seed-file={d / 'munge' / 'munged.seed'}", f"--log-file={d / 'log' / 'munged.log'}"])
        _wait("munged", self.munge_socket.exists, 20, [d / "log" / "munged.log"])

        ctld_port, slurmd_port = _free_port(), _free_port()
        dbd_port = _free_port() if self.accounting else None
        self.db_port = _free_port() if self.accounting else None
        self._install_configs(ctld_port, slurmd_port, dbd_port)
        if self.accounting:
            self._start_accounting(dbd_port, timeout)
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.node])
        logs = [d / "log" / "slurmctld.log", d / "log" / "slurmd.log"]
        _wait("node idle", lambda: self.node_state() == "idle", timeout, logs)

    def _start_accounting(self, dbd_port: int, timeout: float):
        d = self.dir
        db = d / "mariadb"
        self.db_socket = d / "mariadb.sock"
        subprocess.run([_which("mariadb-install-db"), "--no-defaults", f"--datadir={db}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True, timeout=120)
        self._spawn("mariadbd", ["mariadbd", "--no-defaults", f"--datadir={db}", f"--socket={self.db_socket}",
                                 f"--port={self.db_port}", "--bind-address=127.0.0.1", "--user=root",
                                 f"--pid-file={d / 'mariadb.pid'}", f"--log-error={d / 'log' / 'mariadb.log'}",
                                 "--innodb-buffer-pool-size=64M", "--skip-log-bin"])
        client = ["mariadb", "--no-defaults", f"--socket={self.db_socket}", "-uroot"]
        _wait("mariadb", lambda: _ok(*client, "-e", "select 1"), timeout, [d / "log" / "mariadb.log"])
        subprocess.run(client + ["-e", "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; "
                                       "GRANT ALL ON *.* TO 'slurm'@'127.0.0.1';"], check=True, capture_output=True)
        self._spawn("slurmdbd", ["slurmdbd", "-D"])
        _wait("slurmdbd", lambda: _ok("sacctmgr", "-n", "list", "cluster"), timeout,
              [d / "log" / "slurmdbd.log", d / "log" / "mariadb.log"])
        for cmd in (["add", "cluster", CLUSTER], ["add", "account", ACCOUNT],
                    ["add", "user", "root", f"account={ACCOUNT}"]):
            subprocess.run(["sacctmgr", "-i", *cmd], check=True, capture_output=True, timeout=30)

    def _install_configs(self, ctld_port: int, slurmd_port: int, dbd_port: int | None):
        d = self.dir
        host = socket.gethostname().split(".")[0]
        auth = f"AuthInfo=socket={self.munge_socket}"
        if self.accounting:
            accounting = (f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\n"
                          f"AccountingStoragePort={dbd_port}\n"
                          # the munge socket for connections to slurmdbd (AuthInfo covers the others)
                          f"AccountingStoragePass={self.munge_socket}\nJobAcctGatherType=jobacct_gather/linux\n")
        else:
            accounting = "AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none\n"
        node = (f"NodeName={self.node} NodeAddr=127.0.0.1 NodeHostname={host} CPUs={self.cpus} "
                f"RealMemory={self.memory_mb} Gres=gpu:1 State=UNKNOWN")
        conf = f"""# written by tests/slurm/slurm_cluster.py for a test cluster; removed (or the old file restored) on stop
ClusterName={CLUSTER}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
{auth}
StateSaveLocation={d / 'state'}
SlurmdSpoolDir={d / 'spool'}
SlurmctldPidFile={d / 'slurmctld.pid'}
SlurmdPidFile={d / 'slurmd.pid'}
SlurmctldLogFile={d / 'log' / 'slurmctld.log'}
SlurmdLogFile={d / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MinJobAge={self.min_job_age}
SlurmdTimeout={self.slurmd_timeout}
OverTimeLimit={self.over_time_limit}
KillWait=5
InactiveLimit=0
{accounting}JobCompType=jobcomp/none
GresTypes=gpu
{node}
PartitionName={self.cpu_partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
PartitionName={self.gpu_partition} Nodes={self.node} MaxTime=INFINITE State=UP
"""
        files = {ETC / "slurm.conf": (conf, 0o644), ETC / "gres.conf": ("Name=gpu File=/dev/null\n", 0o644)}
        if self.accounting:
            files[ETC / "slurmdbd.conf"] = (f"""DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
{auth}
AuthType=auth/munge
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.db_port}
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile={d / 'slurmdbd.pid'}
LogFile={d / 'log' / 'slurmdbd.log'}
""", 0o600)
        ETC.mkdir(parents=True, exist_ok=True)
        for path, (text, mode) in files.items():
            if path not in self._saved:
                self._saved[path] = path.read_bytes() if path.exists() else None
            path.write_text(text)
            path.chmod(mode)

    def _spawn(self, name: str, cmd: list[str]):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
        out = open(self.dir / "log" / f"{name}.out", "wb")
        proc = subprocess.Popen([_which(cmd[0]) or cmd[0], *cmd[1:]], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        out.close()
        self._procs.append((name, proc))

    def stop(self):
        """Cancel every job, end each daemon by its PID (TERM, then KILL) and any job process left, restore
        /etc/slurm, release the lock."""
        try:
            if any(n == "slurmctld" and p.poll() is None for n, p in self._procs):
                subprocess.run(["scancel", "--full", f"--partition={self.cpu_partition},{self.gpu_partition}"],
                               capture_output=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            pass
        for name, proc in reversed(self._procs):  # slurmd before slurmctld before slurmdbd before the database
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self._procs.clear()
        for pid in job_processes():  # a job step that outlived its scancel (it ignored SIGTERM) and the daemons
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for path, old in self._saved.items():
            try:
                if old is None:
                    path.unlink(missing_ok=True)
                else:
                    path.write_bytes(old)
            except OSError:
                pass
        self._saved.clear()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def cleanup(self):
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def kill_slurmd(self) -> int:
        """SIGKILL the node's slurmd (its jobs' step daemons live on, as on a node that lost its slurmd); its PID."""
        for name, proc in self._procs:
            if name == "slurmd" and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
                return proc.pid
        raise RuntimeError("slurmd is not running")

    def restart_slurmd(self) -> None:
        """Start slurmd again (after :meth:`kill_slurmd`); the node returns on its own (ReturnToService=2)."""
        self._procs = [(n, p) for n, p in self._procs if not (n == "slurmd" and p.poll() is not None)]
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.node])

    # -- queries ---------------------------------------------------------------------------------------------
    def node_state(self) -> str:
        try:
            res = subprocess.run(["sinfo", "-h", "-N", "-n", self.node, "-o", "%T"], capture_output=True, text=True,
                                 timeout=20)
        except subprocess.TimeoutExpired:
            return ""
        return res.stdout.split("\n")[0].strip() if res.returncode == 0 else ""

    def jobs(self) -> list[dict]:
        """Every job slurmctld still knows (finished ones for MinJobAge seconds): id, name, state, partition,
        comment (the executor puts the rule name there), GPUs asked for (tres-per-job / per-node), reason and
        working directory (tests running side by side on one cluster tell their jobs apart by it)."""
        fields = ["JobID", "Name", "State", "Partition", "Comment", "tres-per-job", "tres-per-node", "Reason", "WorkDir"]
        res = subprocess.run(["squeue", "-h", "--states=all", "-O", ",".join(f"{f}:|" for f in fields)],
                             capture_output=True, text=True, timeout=20, check=True)
        rows = []
        for line in res.stdout.splitlines():
            values = [v.strip() for v in line.split("|")]
            rows.append(dict(zip([f.lower() for f in fields], values)))
        return rows

    def log_tails(self, chars: int = 1500) -> str:
        if self.dir is None:
            return ""
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-chars:]}"
                         for p in sorted((self.dir / "log").glob("*")) if p.is_file())


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--accounting", action="store_true", help="also slurmdbd over a private MariaDB")
    args = ap.parse_args(argv)
    reason = unavailable_reason(args.accounting)
    if reason:
        print(f"error: {reason}")
        return 1
    cluster = SlurmCluster(accounting=args.accounting)
    with cluster:
        print(f"test cluster up: partitions {cluster.cpu_partition} (default) and {cluster.gpu_partition} "
              f"(1 fake GPU){', account ' + cluster.account if cluster.accounting else ''}; Ctrl-C stops it")
        def interrupt(*_):
            raise KeyboardInterrupt

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # also when started in the background
            signal.signal(sig, interrupt)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    cluster.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
