"""A throw-away single-node SLURM cluster for tests (``pytest -m slurm``).

:func:`local_cluster` writes ``slurm.conf`` / ``gres.conf`` and a private munge key into a fresh
directory, starts ``munged`` (as the ``munge`` user), ``slurmctld`` and ``slurmd`` in the foreground as children of
this process (so their PIDs are exactly the daemons' PIDs), waits until the node is idle, and on exit stops exactly
those processes by PID and deletes the directory, also when the body raised. Nothing system-wide is touched:
munge listens on a private socket, SLURM on two free localhost ports, and clients find the cluster through
``SLURM_CONF`` in :attr:`SlurmCluster.env`.

The node declares 16 CPUs, 64 GB and one GPU whatever the machine has (``SlurmdParameters=config_overrides``;
the GPU's device file is ``/dev/null``): enough for the SLURM profile's requests, and a GPU that the scheduler
allocates (``TresPerJob=gres:gpu:1``, ``CUDA_VISIBLE_DEVICES`` set in the job) although none exists. Accounting is off (no slurmdbd), like on
clusters where ``sacct`` does not work; ``MinJobAge`` keeps finished jobs visible to ``squeue`` for 5 minutes.

Debian 12: ``apt-get install slurmctld slurmd slurm-client munge`` (SLURM 22.05), see ``.ci/install_slurm.sh``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])
NODE = "sednode"
NODE_CPUS = 16
NODE_MEM_MB = 64000
NODE_GPUS = 1
PARTITIONS = ("cpu", "gpu")  # the first is the default partition


class ClusterStartError(RuntimeError):
    """The daemons did not come up; the message holds the tail of their logs."""


def _which(name: str) -> str | None:
    return shutil.which(name, path=SBIN_PATH)


def unavailable_reason() -> str | None:
    """Why a local cluster cannot be started here, or None when it can."""
    missing = [name for name in DAEMONS + CLIENTS if _which(name) is None]
    if missing:
        return f"SLURM/munge binaries not found: {', '.join(missing)} (install with .ci/install_slurm.sh)"
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd/munged by hand needs root"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user (the munge package creates it)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class SlurmCluster:
    """A running cluster: its directory, the client environment and the daemons this process started."""

    root: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    def run(self, *args: str, timeout: float = 30) -> str:
        """Run a SLURM client command against this cluster; return its stdout (raises on failure)."""
        return subprocess.run(
            args, env=self.env, capture_output=True, text=True, timeout=timeout, check=True
        ).stdout

    def node_state(self) -> str:
        return self.run("sinfo", "--noheader", "--nodes", NODE, "--format", "%T").split()[0].strip().lower()

    def job_record(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` of a job as a dict (jobs stay known for MinJobAge = 300 s after they end)."""
        text = self.run("scontrol", "--oneliner", "show", "job", job_id)
        record: dict[str, str] = {}
        for item in text.split():
            key, sep, value = item.partition("=")
            if sep:
                record[key] = value
        return record

    def queue(self) -> list[dict[str, str]]:
        """Every job slurmctld still knows (any state): id, name, state, partition, comment."""
        out = self.run("squeue", "--states=all", "--noheader", "--format=%i|%j|%T|%P|%k")
        keys = ("id", "name", "state", "partition", "comment")
        return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line.strip()]

    def log_tail(self, lines: int = 20) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(parts)


def _write_config(root: Path, ports: tuple[int, int]) -> None:
    etc = root / "etc"
    for sub in ("etc", "state", "spool", "log", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ctld_port, slurmd_port = ports
    partitions = "\n".join(
        f"PartitionName={name} Nodes={NODE} Default={'YES' if i == 0 else 'NO'} MaxTime=INFINITE State=UP"
        for i, name in enumerate(PARTITIONS)
    )
    (etc / "slurm.conf").write_text(
        f"""\
ClusterName=sedlibtest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
SlurmdParameters=config_overrides
DefMemPerCPU=1000
GresTypes=gpu
NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname=localhost State=UNKNOWN \
  CPUs={NODE_CPUS} RealMemory={NODE_MEM_MB} Gres=gpu:{NODE_GPUS}
{partitions}
"""
    )
    (etc / "gres.conf").write_text(f"NodeName={NODE} Name=gpu File=/dev/null\n")


def _start_munge(cluster: SlurmCluster) -> None:
    munge_dir = cluster.root / "munge"
    munge_dir.mkdir(mode=0o700)
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    user = pwd.getpwnam("munge")
    for path in (munge_dir, key):
        os.chown(path, user.pw_uid, user.pw_gid)
    cluster.processes["munged"] = subprocess.Popen(
        [
            _which("munged"), "--foreground", "--force",
            f"--socket={munge_dir}/munge.socket", f"--key-file={key}",
            f"--pid-file={munge_dir}/munged.pid", f"--seed-file={munge_dir}/munged.seed",
            f"--log-file={cluster.root}/log/munged.log",
        ],
        user=user.pw_uid, group=user.pw_gid, extra_groups=[],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=cluster.env,
    )
    _wait(cluster, lambda: (munge_dir / "munge.socket").exists(), 15, "munged socket")


def _start_daemon(cluster: SlurmCluster, name: str, *args: str) -> None:
    """Start a SLURM daemon in the foreground; without a LogFile setting it logs to log/NAME.log (stderr)."""
    log = open(cluster.root / "log" / f"{name}.log", "wb")
    with log:
        cluster.processes[name] = subprocess.Popen(
            [_which(name), "-D", "-f", str(cluster.conf), *args],
            stdout=log, stderr=subprocess.STDOUT, env=cluster.env,
        )


def _wait(cluster: SlurmCluster, ready, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in cluster.processes.items():
            if proc.poll() is not None:
                raise ClusterStartError(
                    f"{name} exited with status {proc.returncode} while waiting for {what}\n{cluster.log_tail()}"
                )
        with contextlib.suppress(subprocess.SubprocessError, IndexError, OSError):
            if ready():
                return
        time.sleep(0.5)
    raise ClusterStartError(f"timed out after {timeout:.0f} s waiting for {what}\n{cluster.log_tail()}")


def _cancel_jobs(cluster: SlurmCluster, timeout: float = 30) -> None:
    """Cancel the jobs still queued or running on this cluster and wait until their processes are gone."""
    ctld = cluster.processes.get("slurmctld")
    if ctld is None or ctld.poll() is not None:
        return
    active = ("squeue", "--noheader", "--states=PENDING,RUNNING,COMPLETING,CONFIGURING,SUSPENDED", "--format=%i")
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        if cluster.run(*active, timeout=10).strip():
            cluster.run("scancel", "--full", "--user", "root", timeout=10)
            deadline = time.monotonic() + timeout
            while cluster.run(*active, timeout=10).strip() and time.monotonic() < deadline:
                time.sleep(0.5)


def _stop(cluster: SlurmCluster, timeout: float = 15) -> None:
    """Stop the daemons this process started (reverse start order), by PID: SIGTERM, then SIGKILL."""
    for name in reversed(list(cluster.processes)):
        proc = cluster.processes[name]
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)


@contextlib.contextmanager
def local_cluster(start_timeout: float = 60) -> Iterator[SlurmCluster]:
    """Start a private single-node cluster; yield it; stop its daemons and delete its files on exit.

    Raises :class:`ClusterStartError` (with the daemons' log tails) when the node is not idle within
    ``start_timeout`` seconds. Call :func:`unavailable_reason` first to skip where it cannot work.
    """
    root = Path(tempfile.mkdtemp(prefix="sedlib-slurm-"))
    root.chmod(0o755)  # the munge user must reach its own 0700 folder inside
    env = {**os.environ, "SLURM_CONF": str(root / "etc" / "slurm.conf")}
    env["PATH"] = SBIN_PATH
    cluster = SlurmCluster(root=root, env=env)
    try:
        _write_config(root, (_free_port(), _free_port()))
        _start_munge(cluster)
        _start_daemon(cluster, "slurmctld", "-c", "-i")
        _wait(cluster, lambda: cluster.run("scontrol", "ping", timeout=5).count("UP") > 0, start_timeout, "slurmctld")
        _start_daemon(cluster, "slurmd", "-N", NODE)
        _wait(cluster, lambda: cluster.node_state() == "idle", start_timeout, f"node {NODE} idle")
        yield cluster
    finally:
        try:
            _cancel_jobs(cluster)
        finally:
            _stop(cluster)
            shutil.rmtree(root, ignore_errors=True)
