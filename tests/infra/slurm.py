"""A one-node Slurm cluster on this machine: its own munged, slurmctld and slurmd, with every
file (key, sockets, state, spool, logs) in a temporary directory and ports picked free.

Use :class:`SlurmCluster` as a context manager; leaving it (also on an error or a failed test)
cancels every job, stops the daemons and removes the directory. Clients find the cluster
through ``SLURM_CONF`` in :attr:`SlurmCluster.env`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psutil

from tests.infra.common import ClosedOnExit, free_port, require, stop_pids, stop_process, wait_for

DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "srun", "setpriv")


def require_slurm() -> None:
    """Fail (not skip) naming what is missing to run a one-node Slurm cluster."""
    require(root=True, commands=[*DAEMONS, *CLIENTS, "mungekey"], users=["munge"])


class SlurmCluster(ClosedOnExit):
    """slurmctld + slurmd on 127.0.0.1, authenticating through a private munged."""

    def __init__(self) -> None:
        require_slurm()
        # Not under pytest's tmp dirs: those are 0700 root, and munged runs as the munge user.
        self.dir = Path(tempfile.mkdtemp(prefix="proxyflox-slurm-"))
        self.dir.chmod(0o755)
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.dir / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._daemons: list[subprocess.Popen[bytes]] = []
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        munge = self.dir / "munge"
        munge.mkdir(mode=0o755)  # munged wants its socket directory readable by all
        shutil.chown(munge, "munge", "munge")
        key = munge / "munge.key"
        subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
        socket_path = munge / "munge.socket"
        self._spawn(
            "munged",
            [
                "setpriv", "--reuid=munge", "--regid=munge", "--init-groups",
                "/usr/sbin/munged", "--foreground", f"--socket={socket_path}",
                f"--key-file={key}", f"--pid-file={munge / 'munged.pid'}",
                f"--seed-file={munge / 'munged.seed'}", f"--log-file={munge / 'munged.log'}",
            ],
        )  # fmt: skip
        wait_for("munged's socket", socket_path.exists, timeout=10)

        for sub in ("state", "spool"):
            (self.dir / sub).mkdir()
        self.conf.write_text(
            "ClusterName=proxyflox-test\n"
            f"SlurmctldHost={self.node}(127.0.0.1)\n"
            f"SlurmctldPort={free_port()}\n"
            f"SlurmdPort={free_port()}\n"
            "SlurmUser=root\n"
            "AuthType=auth/munge\n"
            "CredType=cred/munge\n"
            f"AuthInfo=socket={socket_path}\n"
            f"StateSaveLocation={self.dir / 'state'}\n"
            f"SlurmdSpoolDir={self.dir / 'spool'}\n"
            f"SlurmctldPidFile={self.dir / 'slurmctld.pid'}\n"
            f"SlurmdPidFile={self.dir / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={self.dir / 'slurmctld.log'}\n"
            f"SlurmdLogFile={self.dir / 'slurmd.log'}\n"
            # No cgroups, no accounting daemon: what a bare machine (or a container) allows.
            "ProctrackType=proctrack/linuxproc\n"
            "TaskPlugin=task/none\n"
            "JobAcctGatherType=jobacct_gather/none\n"
            "AccountingStorageType=accounting_storage/none\n"
            "JobCompType=jobcomp/none\n"
            "MpiDefault=none\n"
            "MailProg=/bin/true\n"
            "ReturnToService=2\n"
            # Cores only: with memory tracked as well, the first job would take the whole node's
            # memory (no RealMemory is configured) and a second job could never start.
            "SelectType=select/cons_tres\n"
            "SelectTypeParameters=CR_Core\n"
            # Jobs start in ~1 s instead of ~3 s.
            "SchedulerParameters=batch_sched_delay=0\n"
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} State=UNKNOWN\n"
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
        )
        self._spawn("slurmctld", ["/usr/sbin/slurmctld", "-D", "-f", str(self.conf)])
        self._spawn("slurmd", ["/usr/sbin/slurmd", "-D", "-f", str(self.conf)])
        wait_for(f"node {self.node} to be idle", self._node_idle, timeout=30, interval=0.3)

    def _spawn(self, name: str, command: list[str]) -> None:
        with open(self.dir / f"{name}.out", "wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        self._daemons.append(process)

    def _node_idle(self) -> bool:
        for process in self._daemons:
            if process.poll() is not None:
                name = Path(str(process.args[0] if isinstance(process.args, list) else "")).name
                raise RuntimeError(f"{name} exited: {self.logs()}")
        done = self.run("sinfo", "--noheader", "--format=%t", check=False)
        return done.stdout.strip() == "idle"

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A Slurm client command against this cluster."""
        return subprocess.run(
            list(command), env=self.env, capture_output=True, text=True, check=check, timeout=30
        )

    def queue(self) -> list[str]:
        """Ids of the jobs Slurm still knows as pending, running or completing."""
        return self.run("squeue", "--noheader", "--format=%i").stdout.split()

    def job_state(self, job_id: str) -> dict[str, str]:
        """``scontrol show job``'s fields (Slurm keeps finished jobs for MinJobAge, 300 s)."""
        text = self.run("scontrol", "show", "job", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def logs(self) -> str:
        """The daemons' log tails, for failure messages."""
        parts = []
        for name in ("munged.out", "slurmctld.log", "slurmd.log"):
            path = self.dir / name
            if path.exists():
                parts.append(f"{name}: {path.read_text()[-1500:]}")
        return "\n".join(parts)

    def close(self) -> None:
        """Cancel every job, stop the daemons and whatever a job left, remove the directory."""
        if self.conf.exists() and len(self._daemons) == 3:
            self.run("scancel", "--partition=debug", check=False)
            # Whatever is still running then is stopped below with the daemons.
            with contextlib.suppress(TimeoutError, subprocess.SubprocessError):
                wait_for("the job queue to empty", lambda: not self.queue(), timeout=30)
        leftovers = []
        for process in self._daemons:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftovers += [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
        for process in reversed(self._daemons):  # slurmd, slurmctld, then munged
            stop_process(process)
        stop_pids(leftovers)
        shutil.rmtree(self.dir, ignore_errors=True)
