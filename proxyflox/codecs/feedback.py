"""Error feedback: what a lossy codec did not send stays with the site and joins its next change.

The residual lives on the site's own disk (``state_dir``), never in the store: it is the part of
the site's update not yet sent, so it stays where the data is; it survives a worker restart and
the end of the run's store (which an interrupted run removes); and a site's next task may run in
another worker of the same machine, which reads the same directory.

One file per round the site trained in, ``<state_dir>/<run>/site-<N>/residual-<round>.npz``
(plain arrays, never pickles). The controller tells each site the last round whose update it
aggregated; the site continues from that round's residual. So an update dropped after its site
sent it (a missed deadline), or a round redone after ``--resume``, never counts twice: a resumed
run reads exactly the residuals the uninterrupted one would.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, cast

import numpy as np

from proxyflox.weights import Weights

_FILE = re.compile(r"residual-(\d+)\.npz")


class Residuals:
    """One site's residual files.

    Args:
        state_dir: The site's state directory (``~`` expands on the site).
        run_key: Names the run (its directory's name), so runs never share residuals.
        site: The site.
    """

    def __init__(self, state_dir: str, run_key: str, site: int) -> None:
        self.directory = Path(state_dir).expanduser() / run_key / f"site-{site}"

    def path(self, round_number: int) -> Path:
        """The file of the residual left after ``round_number``."""
        return self.directory / f"residual-{round_number}.npz"

    def load(self, round_number: int | None) -> Weights | None:
        """The residual left after ``round_number`` (``None``: the site has sent nothing yet)."""
        if round_number is None:
            return None
        with np.load(self.path(round_number), allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}

    def save(self, round_number: int, residual: Weights) -> None:
        """Write the residual left after ``round_number``, atomically (temp file + rename)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.path(round_number)
        tmp = target.with_suffix(".tmp.npz")
        np.savez(tmp, **cast(dict[str, Any], residual))
        os.replace(tmp, target)

    def prune(self, keep_from: int | None) -> None:
        """Remove residuals of rounds before ``keep_from`` (no later round reads them)."""
        if keep_from is None or not self.directory.is_dir():
            return
        for entry in self.directory.iterdir():
            match = _FILE.fullmatch(entry.name)
            if match and int(match.group(1)) < keep_from:
                entry.unlink(missing_ok=True)


def residual_of(change: Weights, sent: Weights) -> Weights:
    """What was not sent: ``change - sent`` for every float array (the others travel exactly)."""
    return {
        name: array - sent[name]
        for name, array in change.items()
        if np.issubdtype(array.dtype, np.floating)
    }


def with_residual(change: Weights, residual: Weights | None) -> Weights:
    """The change plus what earlier rounds did not send."""
    if residual is None:
        return change
    return {
        name: array + residual[name] if name in residual else array
        for name, array in change.items()
    }
