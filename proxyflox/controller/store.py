"""The run's store as the controller holds it: opened once, evicted by key, cleaned up.

The controller never puts or gets weights; it only hands the store's config to the apps and
deletes objects by key once nobody needs them.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

from proxystore.store.config import StoreConfig

from proxyflox.controller.planner import Plan
from proxyflox.errors import RunStoppedError, StoreUnreachableError
from proxyflox.settings import ExperimentConfig
from proxyflox.stores import BACKENDS, check_store, file_store_directories, open_store
from proxyflox.stores.settings import StoreSettings


def check_run_stores(config: ExperimentConfig, plan: Plan) -> None:
    """Check that every store of the run can be reached: its own and (a tree) its groups'.

    Raises:
        StoreUnreachableError: naming the first store that cannot be reached.
    """
    if config.transfer != "proxy":
        return
    check_store(config.store)
    for group in plan.tree.nodes() if plan.tree is not None else []:
        if group.store is not None:  # a lab's own store
            check_store(group.store)


def lost_store(config: ExperimentConfig, plan: Plan, err: Exception) -> RunStoppedError | None:
    """The run's stop if ``err`` came while one of its stores is gone, else ``None``.

    An app that reads from or writes to a store that went away fails with whatever error its
    client raises (Redis's ``ConnectionError``, a socket's ``OSError``...). Asking the stores
    is what tells that apart from a bug: a store that is gone stops the run, to be resumed.
    """
    try:
        check_run_stores(config, plan)
    except StoreUnreachableError as unreachable:
        return _lost(str(unreachable), err)
    return None


def _lost(where: str, err: Exception) -> RunStoppedError:
    """The one-line stop for a store that went away (``where``: the store, as users name it)."""
    return RunStoppedError(
        f"lost the store ({where}): {type(err).__name__}: {' '.join(str(err).split())}"
    )


class RunStore:
    """One run's store.

    Args:
        settings: The experiment's ``store`` section.
        run_dir: The run's directory (the file store's default home).
        warn: Called with a line when objects are left behind.
    """

    def __init__(self, settings: StoreSettings, run_dir: Path, warn: Callable[[str], None]) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.warn = warn
        self.store = open_store(settings, run_dir, f"proxyflox-{uuid.uuid4().hex[:12]}")
        self.config: StoreConfig = self.store.config()

    def evict(self, keys: Sequence[Hashable]) -> None:
        """Delete these objects.

        Raises:
            RunStoppedError: if the store cannot be reached any more.
        """
        try:
            for key in keys:
                self.store.evict(key)  # type: ignore[arg-type]  # a connector's own key
        except Exception as err:
            where = BACKENDS[self.settings.backend].describe(self.settings, self.run_dir)
            raise _lost(where, err) from err

    def close(self) -> None:
        """Close the store and clean up after it.

        The run's own store directory is removed (it may hold objects of apps an interrupt cut
        off); in a given shared directory that is the run's subdirectory, nothing else.
        """
        self.store.close()
        for directory in file_store_directories(self.settings, self.run_dir):
            shutil.rmtree(directory, ignore_errors=True)
            if directory.exists():
                left = sum(1 for _ in directory.iterdir())
                self.warn(f"warning: {left} object(s) of this run are left in {directory}")


def no_store_evict(keys: Sequence[Any]) -> None:
    """Direct transfer: nothing is stored, nothing to evict."""
