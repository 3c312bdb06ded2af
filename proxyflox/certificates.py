"""The run's CurveZMQ certificates, received on a machine whose worker pool is started over ssh.

Parsl's ``HighThroughputExecutor(encrypted=True)`` writes a private ``certificates/`` directory
into the executor's run directory when it starts; its worker pool, started with
``--cert_dir DIR``, reads the client's key pair and the server's public key from there. For a Pi,
the controller streams that directory (a tar archive) through ssh into::

    python -m proxyflox.certificates receive DIR

on the Pi, which creates ``DIR`` with mode 0700 (it must not exist yet, so nobody else's
directory is ever written into) and each file in it with mode 0600. Where ``DIR`` is and when it
is removed is decided by :mod:`proxyflox.pi_launcher`.

Standard library only: this runs on the Pi before anything else of the run.
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
from pathlib import Path
from typing import BinaryIO


def receive(target: Path, archive: BinaryIO) -> list[str]:
    """Unpack the certificates in the tar stream ``archive`` into the new directory ``target``.

    Only plain files directly inside the archive's top directory are accepted. On any error
    ``target`` is removed again. Returns the names of the files written.
    """
    target.mkdir(mode=0o700)  # FileExistsError when it exists: never write into another's
    try:
        target.chmod(0o700)  # whatever the umask; Parsl refuses a directory with other modes
        names = []
        with tarfile.open(fileobj=archive, mode="r|") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if member.isdir() and name in ("", "."):
                    continue
                if not member.isfile() or not name or "/" in name or name == "..":
                    raise ValueError(f"unexpected entry {member.name!r} in the certificates")
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has contents
                path = target / name
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out)
                path.chmod(0o600)
                names.append(name)
        if not names:
            raise ValueError("no certificate files arrived")
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return names


def main(argv: list[str]) -> None:
    """``receive DIR``: the archive on stdin."""
    if len(argv) != 2 or argv[0] != "receive":
        sys.exit("usage: python -m proxyflox.certificates receive DIR < certificates.tar")
    try:
        receive(Path(argv[1]), sys.stdin.buffer)
    except (OSError, ValueError, tarfile.TarError) as err:
        sys.exit(f"error: receiving the run's certificates into {argv[1]} failed: {err}")


if __name__ == "__main__":
    main(sys.argv[1:])
