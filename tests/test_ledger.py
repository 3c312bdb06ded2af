"""The reference ledger on its own: every path by which a stored object stops being needed.

Futures are real ``concurrent.futures`` futures, completed by the test (as Parsl completes them
from its own threads); eviction is recorded in the order it happens.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import pytest

from proxyflox.controller.ledger import ReferenceLedger


@dataclass(frozen=True, eq=False)
class Stored:
    """A record holding references to stored objects (keys stand for proxies)."""

    keys: tuple[str, ...]

    def refs(self) -> Sequence[str]:
        return self.keys


class Evictions(list[str]):
    def __call__(self, keys: Sequence[Hashable]) -> None:
        assert all(isinstance(key, str) for key in keys)
        self.extend(str(key) for key in keys)


@pytest.fixture
def evicted() -> Evictions:
    return Evictions()


@pytest.fixture
def ledger(evicted: Evictions) -> ReferenceLedger:
    return ReferenceLedger(evicted, key_of=lambda ref: ref)


def finished(result: object) -> Future[object]:
    future: Future[object] = Future()
    future.set_result(result)
    return future


def test_a_held_record_is_evicted_when_released(
    ledger: ReferenceLedger, evicted: Evictions
) -> None:
    model = ledger.claim(ledger.expect(finished(Stored(("global-1", "state-1")))))
    assert evicted == []
    assert ledger.held() == {"global-1", "state-1"}
    ledger.release(model)
    assert evicted == ["global-1", "state-1"]
    assert ledger.held() == set()


def test_a_global_model_outlives_the_apps_training_from_it(
    ledger: ReferenceLedger, evicted: Evictions
) -> None:
    model = ledger.claim(finished(Stored(("global-1",))))
    train: Future[object] = Future()
    ledger.expect(train, uses=[model])
    ledger.release(model)  # the controller is done with it, one site is still training
    assert evicted == []
    train.set_result(Stored(("update-0",)))
    update = ledger.claim(train)
    assert evicted == ["global-1"]
    ledger.release(update)
    assert evicted == ["global-1", "update-0"]


def test_a_late_site_is_evicted_when_it_arrives_and_only_then_frees_its_model(
    ledger: ReferenceLedger, evicted: Evictions
) -> None:
    model = ledger.claim(finished(Stored(("global-1",))))
    late: Future[object] = Future()
    ledger.expect(late, uses=[model])
    ledger.drop(late)  # the round's deadline passed
    ledger.release(model)  # the round is over
    assert evicted == []  # the late site still reads the global model
    late.set_result(Stored(("update-3",)))
    assert sorted(evicted) == ["global-1", "update-3"]
    assert ledger.held() == set()


def test_a_late_site_arriving_while_its_model_is_still_held_keeps_the_model(
    ledger: ReferenceLedger, evicted: Evictions
) -> None:
    model = ledger.claim(finished(Stored(("global-1",))))
    late: Future[object] = Future()
    ledger.expect(late, uses=[model])
    ledger.drop(late)
    late.set_result(Stored(("update-3",)))
    assert evicted == ["update-3"]
    ledger.release(model)
    assert evicted == ["update-3", "global-1"]


def test_a_failed_site_puts_nothing_and_releases_what_it_used(
    ledger: ReferenceLedger, evicted: Evictions
) -> None:
    model = ledger.claim(finished(Stored(("global-1",))))
    failed: Future[object] = Future()
    ledger.expect(failed, uses=[model])
    failed.set_exception(RuntimeError("worker lost"))
    ledger.drop(failed)
    ledger.release(model)
    assert evicted == ["global-1"]


def test_claiming_a_failed_app_raises_its_error_and_releases_what_it_used(
    ledger: ReferenceLedger, evicted: Evictions
) -> None:
    model = ledger.claim(finished(Stored(("global-1",))))
    failed: Future[object] = Future()
    ledger.expect(failed, uses=[model])
    failed.set_exception(RuntimeError("worker lost"))
    with pytest.raises(RuntimeError, match="worker lost"):
        ledger.claim(failed)
    ledger.release(model)
    assert evicted == ["global-1"]


def test_an_interrupted_run_evicts_what_it_holds_and_what_finished_unclaimed(
    ledger: ReferenceLedger, evicted: Evictions
) -> None:
    model = ledger.claim(finished(Stored(("global-1",))))
    arrived = ledger.expect(finished(Stored(("update-0",))), uses=[model])
    running: Future[object] = Future()  # cut off: what it will put nobody can know of
    ledger.expect(running, uses=[model])
    assert arrived.done()
    ledger.close()  # Ctrl-C before the round collected its updates
    assert sorted(evicted) == ["global-1", "update-0"]
    assert ledger.held() == set()


def test_a_resumed_run_starts_from_the_checkpoints_model_alone(
    evicted: Evictions,
) -> None:
    first = ReferenceLedger(evicted, key_of=lambda ref: ref)
    first.claim(finished(Stored(("global-3",))))
    first.close()  # stopped after round 3
    resumed = ReferenceLedger(evicted, key_of=lambda ref: ref)
    model = resumed.claim(finished(Stored(("global-3-from-checkpoint",))))
    assert resumed.held() == {"global-3-from-checkpoint"}
    resumed.release(model)
    assert evicted == ["global-3", "global-3-from-checkpoint"]


def test_asynchronous_versions_live_while_any_app_trains_from_them(
    ledger: ReferenceLedger, evicted: Evictions
) -> None:
    version0 = ledger.claim(finished(Stored(("v0",))))
    slow: Future[object] = Future()
    ledger.expect(slow, uses=[version0])
    fast = ledger.expect(finished(Stored(("u-fast",))), uses=[version0])
    update = ledger.claim(fast)
    ledger.claim(finished(Stored(("v1",))))  # aggregated the fast update
    ledger.release(version0, update)
    assert evicted == ["u-fast"]  # v0 stays: the slow site trains from it
    slow.set_result(Stored(("u-slow",)))
    ledger.release(ledger.claim(slow))
    assert evicted == ["u-fast", "v0", "u-slow"]
    ledger.close()
    assert evicted[-1] == "v1"


def test_direct_transfer_references_are_not_counted(evicted: Evictions) -> None:
    ledger = ReferenceLedger(evicted, key_of=lambda ref: None)
    model = ledger.claim(finished(Stored(("arrays",))))
    ledger.release(model)
    ledger.close()
    assert evicted == []
    assert ledger.held() == set()


def test_apps_finishing_in_other_threads_evict_each_object_once(
    ledger: ReferenceLedger, evicted: Evictions
) -> None:
    model = ledger.claim(finished(Stored(("global",))))
    futures: list[Future[object]] = [Future() for _ in range(200)]
    for future in futures:
        ledger.expect(future, uses=[model])
        ledger.drop(future)
    threads = [
        threading.Thread(target=future.set_result, args=(Stored((f"update-{i}",)),))
        for i, future in enumerate(futures)
    ]
    for thread in threads:
        thread.start()
    ledger.release(model)
    for thread in threads:
        thread.join()
    assert sorted(evicted) == sorted(["global", *(f"update-{i}" for i in range(200))])
