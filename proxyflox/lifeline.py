"""Run a program in its own session, for no longer than the process that started it.

    python -m proxyflox.lifeline PROGRAM [ARG ...]

Parsl starts each HighThroughputExecutor's interchange as a child of the controller, in the
controller's process group. A terminal's Ctrl-C signals that whole group: the interchanges died
before the controller could shut them down, and its shutdown then waited forever for their
replies. In a session of its own an interchange hears only the controller, which shuts it down.

The other way round, an interchange must not outlive a controller that was killed (``kill -9``,
the OOM killer): on Linux the kernel sends it SIGTERM when its parent dies
(``PR_SET_PDEATHSIG``); its worker pools then lose it and exit after their heartbeat threshold.
Elsewhere only the new session is made.

The program replaces this process (``exec``): it keeps this pid and the pipes it was given.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent dies; exit now if it already has."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # best effort: the session alone still protects against Ctrl-C
    if os.getppid() != parent:  # the parent died before the request took effect
        sys.exit(1)


def main(argv: list[str]) -> None:
    """Start ``argv`` in a new session, tied to this process's parent."""
    if not argv:
        sys.exit("usage: python -m proxyflox.lifeline PROGRAM [ARG ...]")
    parent = os.getppid()
    os.setsid()
    _die_with_parent(parent)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
