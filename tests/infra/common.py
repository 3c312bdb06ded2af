"""What every piece of test infrastructure needs: prerequisites that fail loudly, free ports,
stopping the processes it started."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

import psutil
import pytest

C = TypeVar("C", bound="ClosedOnExit")


class ClosedOnExit:
    """A context manager that calls :meth:`close` however its block ends (errors, Ctrl-C)."""

    def close(self) -> None:
        """Stop and remove everything this object started."""
        raise NotImplementedError

    def __enter__(self: C) -> C:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def require(*, root: bool = False, commands: Iterable[str] = (), users: Iterable[str] = ()) -> None:
    """Fail the test (never skip it) naming every missing prerequisite."""
    missing = []
    if root and os.geteuid() != 0:
        missing.append("root privileges (run the tests as root, as CI does)")
    for command in commands:
        if shutil.which(command) is None and not os.access(command, os.X_OK):
            missing.append(f"the command {command!r}")
    for user in users:
        try:
            pwd.getpwnam(user)
        except KeyError:
            missing.append(f"the system user {user!r}")
    if missing:
        pytest.fail(
            "missing prerequisite(s): " + "; ".join(missing) + " — .ci/run installs them "
            "(apt-get install openssh-server openssh-client iproute2 slurm-wlm munge)",
            pytrace=False,
        )


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: str, check: Callable[[], object], timeout: float, interval: float = 0.1
) -> None:
    """Poll ``check()`` until it is true; raise naming ``condition`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {condition}")
        time.sleep(interval)


def stop_process(process: subprocess.Popen[bytes] | psutil.Process, timeout: float = 5) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; a process that is already gone is fine."""
    try:
        proc = process if isinstance(process, psutil.Process) else psutil.Process(process.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    except psutil.NoSuchProcess:
        pass
    if isinstance(process, subprocess.Popen):
        process.poll()  # reap it


def stop_pids(pids: Iterable[int], timeout: float = 5) -> None:
    """Stop every listed process (and wait for it)."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGTERM)
    alive = _wait_ended(procs, timeout)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    _wait_ended(alive, timeout)


def running(process: psutil.Process | int) -> bool:
    """Whether the process runs. A zombie has exited: one whose parent died waits for this
    machine's init to reap it, which in some containers takes long (``psutil.wait_procs``
    would wait for that)."""
    try:
        proc = process if isinstance(process, psutil.Process) else psutil.Process(process)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_ended(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited; return those still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    alive = [proc for proc in procs if running(proc)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [proc for proc in alive if running(proc)]
    return alive


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text`` (e.g. a run directory)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if text in cmdline:
            found.append(cmdline)
    return found


def run_workflow(
    command: list[str], *, timeout: float, **popen: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command to its end; past ``timeout`` stop it with SIGTERM (the workflow then shuts
    Parsl down, leaving no interchange or worker behind), SIGKILL only if that hangs too."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        pytest.fail(
            f"{' '.join(command)} did not finish in {timeout:.0f}s; stderr: {stderr[-3000:]}",
            pytrace=False,
        )
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
