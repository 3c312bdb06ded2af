"""Host-local copies of objects read from a peer endpoint: one crossing per host, not per worker.

A ProxyStore 1.1.0 endpoint forwards every ``get`` of another endpoint's key to that peer and
keeps nothing of the answer, and every worker of a host attaches to the host's one endpoint:
a site executor with W workers would pull the global model W times over its link each round.
So reads that several workers of a host make (the global model; apps mark them with
:func:`shared_reads`) go through a directory of copies in the host's ProxyStore home, one per
run (:func:`copies_directory`, mode 0700): the first worker takes the directory's lock
(``fcntl``), fetches and writes the copy atomically (temporary file, then rename); the others
wait on the lock, then read the copy from disk.

Why a directory and not a copy put into the local endpoint: an endpoint has no lock and no
set-if-absent, so workers that start together would all miss and all fetch; a host lock is
needed anyway, and the directory beside it lists the copies (for pruning and removal), keeps
them out of the endpoint process's memory and is read without a round trip through it.

A copy is pruned once its object has left the store (the controller evicts an object when no
record or running app needs it, :mod:`proxyflox.controller.ledger`), when the next object
arrives; the run's end removes the directory (:func:`remove_copies`). A copy is only ever a
shortcut: a missing or unwritable one means a fetch, never an error.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

#: The directory of copies inside a ProxyStore home; one subdirectory per run's store.
COPIES_DIR = "proxyflox-copies"
LOCK_FILE = ".lock"
TEMPORARY_PREFIX = ".writing-"

_shared = threading.local()


@contextlib.contextmanager
def shared_reads() -> Iterator[None]:
    """Reads in this block are of objects other workers of this host read too."""
    previous = reads_are_shared()
    _shared.on = True
    try:
        yield
    finally:
        _shared.on = previous


def reads_are_shared() -> bool:
    """Whether the calling thread is inside :func:`shared_reads`."""
    return bool(getattr(_shared, "on", False))


def copies_name(run_dir: Path) -> str:
    """The name of a run's copies: one per run directory (a tree's group stores have their own)."""
    return hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]


def copies_directory(home: str | Path, name: str) -> Path:
    """Where a host keeps the copies of run ``name``, under its ProxyStore home."""
    return Path(home) / COPIES_DIR / name


class HostCopies:
    """The copies of one run's objects on this host.

    Args:
        directory: The run's directory of copies (made on the first copy).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def names(self) -> list[str]:
        """The copies held, by name."""
        try:
            entries = os.listdir(self.directory)
        except OSError:  # none made yet, or a home that cannot hold them
            return []
        return sorted(name for name in entries if not name.startswith("."))

    def read(self, name: str) -> bytes | None:
        """The copy ``name``, or ``None`` if this host holds none (or cannot read it)."""
        try:
            return (self.directory / name).read_bytes()
        except OSError:
            return None

    def fetch_once(
        self,
        name: str,
        fetch: Callable[[], bytes | None],
        is_alive: Callable[[str], bool],
    ) -> bytes | None:
        """The object ``name``: its copy, or fetched by exactly one worker of this host.

        Args:
            name: The copy's name (the object's key as a file name).
            fetch: Reads the object from where it lives (``None``: it is not there).
            is_alive: Whether another copy's object is still in the store; copies whose
                objects are gone are pruned before a new one is written.
        """
        copy = self.read(name)
        if copy is not None:
            return copy
        try:
            lock = self._open_lock()
        except OSError:  # a home this process cannot write to: no copies, the plain read
            return fetch()
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            copy = self.read(name)  # another worker fetched it while this one waited
            if copy is not None:
                return copy
            data = fetch()
            if data is not None:
                self._prune(is_alive, keep=name)
                self._write(name, data)
            return data

    def _open_lock(self) -> IO[str]:
        self.directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory.mkdir(mode=0o700, exist_ok=True)
        return open(self.directory / LOCK_FILE, "a")

    def _write(self, name: str, data: bytes) -> None:
        """Write the copy whole or not at all: readers never see half a copy."""
        temporary = None
        try:
            descriptor, temporary = tempfile.mkstemp(dir=self.directory, prefix=TEMPORARY_PREFIX)
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
            os.replace(temporary, self.directory / name)
        except OSError:  # a full disk, or the run's end removed the directory: no copy
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)

    def _prune(self, is_alive: Callable[[str], bool], keep: str) -> None:
        for name in self.names():
            if name != keep and not is_alive(name):
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / name).unlink()


def remove_copies(home: str | Path, names: Sequence[str]) -> int:
    """Remove this host's copies of the given runs; return how many copies there were.

    The directory of copies goes too once no run has copies left in it.
    """
    removed = 0
    for name in names:
        copies = HostCopies(copies_directory(home, name))
        removed += len(copies.names())
        shutil.rmtree(copies.directory, ignore_errors=True)
    with contextlib.suppress(OSError):  # other runs' copies are still there
        (Path(home) / COPIES_DIR).rmdir()
    return removed
