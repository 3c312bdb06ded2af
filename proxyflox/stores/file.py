"""File store: one file per object in a directory every process can read.

The directory is on a local disk or a shared filesystem. The default on one machine.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from proxystore.connectors.file import FileConnector, FileKey

from proxyflox.errors import StoreUnreachableError
from proxyflox.stores.settings import StoreSettings


class OwnedBufferFileConnector(FileConnector):
    """ProxyStore's file connector, reading each object into a ``bytearray`` of its own.

    ``FileConnector.get`` returns immutable ``bytes``; over a ``bytearray`` the arrays of a
    weights object are writable views (the aggregator adds into them in place), with the one
    read of the file that ``get`` does anyway and no copy after it.
    """

    def get(self, key: FileKey) -> bytearray | None:
        """The object's bytes, or ``None`` if it is not (completely) written."""
        path = os.path.join(self.store_dir, key.filename)
        if not os.path.exists(path + ".ready"):
            return None
        with open(path, "rb", buffering=0) as file:
            size = os.fstat(file.fileno()).st_size
            buffer = bytearray(size)
            view = memoryview(buffer)
            read = 0
            while read < size:
                got = file.readinto(view[read:])
                if not got:  # the file shrank under the reader: what is there is all there is
                    del view
                    del buffer[read:]
                    break
                read += got
        return buffer


def file_connector(directory: Path) -> OwnedBufferFileConnector:
    """A connector on ``directory``, the run's own, created private to the user (mode 0700).

    A parent that does not exist yet is created private too; one that exists keeps its mode.
    ``clear=False``: the run evicts its own objects; a worker closing its connector must never
    delete the directory under the others.
    """
    directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.mkdir(exist_ok=True, mode=0o700)
    directory.chmod(0o700)
    return OwnedBufferFileConnector(str(directory.resolve()), clear=False)


def given_or_default(settings: StoreSettings, run_dir: Path | None) -> Path:
    """The directory the settings name: ``store.directory``, or ``store/`` in the run directory."""
    if settings.directory is not None:
        return Path(settings.directory)
    return (run_dir or Path("<run directory>")) / "store"


def store_directory(settings: StoreSettings, run_dir: Path) -> Path:
    """Where this run's objects go.

    That is ``store/`` in the run directory, or a directory of the run's own inside
    ``store.directory``. A given directory may be shared (``/tmp``, a project space): the run
    never changes its mode, and counts and removes only its own objects.
    """
    if settings.directory is None:
        return run_dir / "store"
    where = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:8]
    return Path(settings.directory) / f"proxyflox-{run_dir.name}-{where}"


class FileBackend:
    """Objects as files in a directory."""

    def describe(self, settings: StoreSettings, run_dir: Path | None) -> str:
        """``file store in DIRECTORY``."""
        return f"file store in {given_or_default(settings, run_dir)}"

    def check(self, settings: StoreSettings) -> None:
        """A given directory must be usable now; the run's own is created later."""
        if settings.directory is None:
            return
        directory = Path(settings.directory)
        parent = directory if directory.exists() else directory.parent
        if not parent.is_dir():
            raise StoreUnreachableError(f"{self.describe(settings, None)}: {parent} does not exist")

    def connector(self, settings: StoreSettings, run_dir: Path) -> OwnedBufferFileConnector:
        """A connector on the store directory, which it creates."""
        return file_connector(store_directory(settings, run_dir))

    def site_options(self, settings: StoreSettings) -> dict[str, dict[str, str]]:
        """No per-site options: every process reads the same directory."""
        return {}
