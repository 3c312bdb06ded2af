"""Many sampled clients per round, multiplexed over the executors of parsl_configs/local.py."""

from __future__ import annotations

import csv
import gc
import logging
import tracemalloc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from proxyflox.controller import RunObserver, run_federation
from proxyflox.settings import load_experiment
from proxyflox.sites import load_deployment
from tests.helpers import DEFAULT_EXPERIMENT

SITES = 200
ROUNDS = 5
#: Python heap the run may gain from round 3 to the last: far below one round's traffic
#: (200 updates of ~0.6 MB each) or 0.4 KB kept per sampled client per round. Round 2 still
#: settles (here +0.7 MB once: containers growing to their size), later rounds add ~60 KB.
HEAP_GROWTH_LIMIT = 150_000


class HeapPerRound(RunObserver):
    """What the Python heap gained since round 1 ended, when each later round's row is written.

    Tracing starts once round 1 is done (imports, data loading): the cold round runs at full
    speed, and what is traced afterwards is only what later rounds allocated and kept.
    """

    def __init__(self) -> None:
        self.traced: list[int] = []

    def round_finished(self, round_number: int, row: Mapping[str, Any]) -> None:
        gc.collect()
        if round_number == 1:
            tracemalloc.start()
        else:
            self.traced.append(tracemalloc.get_traced_memory()[0])


def test_a_round_of_200_sampled_clients_runs_and_the_heap_stays_flat(tmp_path: Path) -> None:
    experiment = load_experiment(
        DEFAULT_EXPERIMENT,
        {
            "sites": str(SITES),
            "clients_per_round": str(SITES),
            "rounds": str(ROUNDS),
            "samples_per_site": "4",
        },
    )
    heap = HeapPerRound()
    # pytest keeps every log record a test emits (to show them if it fails): Parsl's DEBUG
    # lines, a few per task, would be the heap's growth. Parsl's own parsl.log still gets them.
    parsl_logger = logging.getLogger("parsl")
    parsl_logger.propagate = False
    try:
        run_federation(
            experiment,
            load_deployment("local.py"),
            tmp_path,
            progress=lambda line: None,
            observer=heap,
        )
    finally:
        tracemalloc.stop()
        parsl_logger.propagate = True
    with open(tmp_path / "rounds.csv", newline="") as file:
        rounds = list(csv.DictReader(file))
    assert [int(row["sites"]) for row in rounds] == [SITES] * ROUNDS
    with open(tmp_path / "sites.csv", newline="") as file:
        sites = list(csv.DictReader(file))
    assert len(sites) == SITES * ROUNDS
    # Multiplexed: site i on executor i mod 4, all sites of a round once each.
    assert {row["executor"] for row in sites if int(row["site"]) % 4 == 1} == {"site-1"}
    assert sorted(int(row["site"]) for row in sites if row["round"] == "2") == list(range(SITES))
    growth = heap.traced[-1] - heap.traced[1]  # from round 3's end to the last round's
    assert growth < HEAP_GROWTH_LIMIT, heap.traced
