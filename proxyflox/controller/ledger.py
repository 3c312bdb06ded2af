"""When a stored object may be evicted: one reference count per object, for every controller.

ProxyStore's lifetimes belong to the process that created an object; here objects are put by
the sites and the aggregator and consumed by other processes, while only the controller knows
who still needs them. So the controller counts: a record it holds (a global model, an update)
counts once, and so does every app still running from it. At zero the object is evicted. An
app that nobody waits for any more (a late site) is *dropped*: what it puts is evicted as soon
as it arrives, and what it started from is released then. :meth:`ReferenceLedger.close`
evicts whatever is left, on every way out of a run.

Records are anything with a ``refs()`` method yielding references; ``key_of`` turns a reference
into the hashable key of a stored object (``None`` for weights that travel directly).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

R = TypeVar("R")


class Record(Protocol):
    """A message that refers to stored objects."""

    def refs(self) -> Iterable[Any]:
        """The references it holds."""
        ...


class ReferenceLedger:
    """Counts who still needs each stored object and evicts it when nobody does.

    Args:
        evict: Deletes objects by key (may raise, e.g. when the store is gone).
        key_of: The key of a reference, or ``None`` if it is not a stored object.
    """

    def __init__(
        self,
        evict: Callable[[Sequence[Hashable]], None],
        key_of: Callable[[Any], Hashable | None],
    ) -> None:
        self._evict = evict
        self._key_of = key_of
        self._counts: Counter[Hashable] = Counter()
        self._expected: dict[Future[Any], list[Any]] = {}  # future -> records it uses
        self._lock = threading.Lock()  # dropped apps' callbacks run in Parsl's threads

    # -- apps ----------------------------------------------------------------------------------

    def expect(self, future: Future[R], uses: Sequence[Any] = ()) -> Future[R]:
        """An app is running from ``uses``: keep them until its result is settled."""
        with self._lock:
            self._expected[future] = list(uses)
            self._add(uses, +1)
        return future

    def claim(self, future: Future[R]) -> R:
        """The app's result, now held by the caller (until :meth:`release`).

        Raises:
            Exception: the app's own error; the records it used are released all the same.
        """
        try:
            result = future.result()
        except BaseException:
            self._settle(future)
            raise
        with self._lock:
            self._add([result], +1)
        self._settle(future)
        return result

    def drop(self, future: Future[Any]) -> None:
        """Nobody will use this app's result: evict what it puts once it arrives.

        Eviction is at once if the result has already arrived; what the app started from is
        released then.
        """

        def settle(done: Future[Any]) -> None:
            if not done.cancelled() and done.exception() is None:
                self._evict_unheld([done.result()])
            self._settle(done)

        future.add_done_callback(settle)

    # -- records the caller holds ----------------------------------------------------------------

    def hold(self, *records: Any) -> None:
        """Count these records once more."""
        with self._lock:
            self._add(records, +1)

    def release(self, *records: Any) -> None:
        """Count these records once less; evict the objects nobody needs now."""
        with self._lock:
            freed = self._add(records, -1)
        if freed:
            self._evict(freed)

    def held(self) -> set[Hashable]:
        """Keys of the objects still counted."""
        with self._lock:
            return {key for key, count in self._counts.items() if count > 0}

    def close(self) -> None:
        """Evict everything left: objects still held, and what finished apps put unclaimed.

        Apps still running when a run is cut short put objects nobody can know of.
        """
        with self._lock:
            finished = [
                future.result()
                for future in self._expected
                if future.done() and not future.cancelled() and future.exception() is None
            ]
            keys = [key for key, count in self._counts.items() if count > 0]
            keys += [key for key in self._keys(finished) if key not in keys]
            self._counts.clear()
            self._expected.clear()
        if keys:
            self._evict(keys)

    # -- inside ----------------------------------------------------------------------------------

    def _settle(self, future: Future[Any]) -> None:
        with self._lock:
            uses = self._expected.pop(future, [])
            freed = self._add(uses, -1)
        if freed:
            self._evict(freed)

    def _evict_unheld(self, records: Sequence[Any]) -> None:
        with self._lock:
            keys = [key for key in self._keys(records) if self._counts[key] <= 0]
        if keys:
            self._evict(keys)

    def _keys(self, records: Iterable[Any]) -> list[Hashable]:
        keys: list[Hashable] = []
        for record in records:
            for ref in getattr(record, "refs", lambda: ())():
                key = self._key_of(ref)
                if key is not None:
                    keys.append(key)
        return keys

    def _add(self, records: Iterable[Any], step: int) -> list[Hashable]:
        """Change the counts (lock held); return the keys that dropped to zero."""
        freed = []
        for key in self._keys(records):
            self._counts[key] += step
            if self._counts[key] <= 0:
                del self._counts[key]
                if step < 0:
                    freed.append(key)
        return freed
