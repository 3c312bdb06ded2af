"""File store: one file per object in a directory every process can read (local disk or a shared
filesystem). The default on one machine."""

from __future__ import annotations

from pathlib import Path

from proxystore.connectors.file import FileConnector


def file_connector(directory: Path) -> FileConnector:
    """A connector on ``directory``, created private to the user (mode 0700).

    ``clear=False``: the run evicts its own objects; a worker closing its connector must never
    delete the directory under the others.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.chmod(0o700)
    return FileConnector(str(directory.resolve()), clear=False)
