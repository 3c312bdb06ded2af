"""The topology benchmark's machinery (``benchmarks/topology.py``) on T2, one small model, one
round, direct and ``multi`` (Redis for the aggregator and sites 0-1, endpoints for sites 2-3):
every Pi's link carries at least the model down and the update up, and the CSV files have the
columns the docs name.

Needs root, ``ip``, ``tc``, OpenSSH and redis-server, like ``test_netlab.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmarks import topology
from benchmarks.common import DOCS

pytestmark = pytest.mark.slow

SUMMARY_COLUMNS = {
    "topology", "bottleneck", "model", "model_mb", "mode", "rounds", "must_cross_mb",
    "line_rate_seconds", "round_seconds", "comm_seconds", "aggregate_resolve_seconds",
    "bottleneck_mb_max", "bottleneck_mb_min", "copies_measured", "wire_seconds",
    "comm_over_line_rate", "comm_over_direct", "comm_over_redis", "round_over_t1_lan",
}  # fmt: skip


def test_t2_rounds_count_the_bytes_over_every_pi_link(tmp_path: Path) -> None:
    # What was measured before stays in the files; this run replaces T2's direct and multi rows.
    measured = ("direct", "multi")
    with open(DOCS / "bench_topology_rounds.csv", newline="") as file:
        before = [row for row in csv.DictReader(file) if row["topology"] in ("t1", "t2")]
    kept = [row for row in before if row["topology"] == "t1" or row["mode"] not in measured]
    with open(tmp_path / "bench_topology_rounds.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(before[0]))
        writer.writeheader()
        writer.writerows(before)
    assert topology.main(
        ["--topology", "t2", "--models", "mobilenet-0.4", "--modes", "direct", "multi",
         "--reps", "1", "--rounds", "1", "--out", str(tmp_path)]
    ) == 0  # fmt: skip
    with open(tmp_path / "bench_topology_rounds.csv", newline="") as file:
        rounds = list(csv.DictReader(file))
    with open(tmp_path / "bench_topology.csv", newline="") as file:
        summary = list(csv.DictReader(file))
    assert (tmp_path / "bench_topology.png").stat().st_size > 0
    assert not SUMMARY_COLUMNS - set(summary[0])
    assert [row for row in rounds if row in kept] == kept
    assert {row["topology"] for row in summary} == {"t1", "t2"}
    rounds = [row for row in rounds if row not in kept]
    summary = [row for row in summary if row["topology"] == "t2" and row["mode"] in measured]
    assert sorted(row["mode"] for row in summary) == ["direct", "multi"]
    assert sorted(row["mode"] for row in rounds) == ["direct", "multi"]
    for row in rounds:
        model_bytes = float(row["model_mb"]) * 1e6
        assert model_bytes > 2e6
        # Each Pi: the global model down and its update up, whatever the mode and route;
        # Parsl's tasks, ssh, the store's messages and the peer path's framing add a little,
        # nothing crosses twice.
        for link in topology.VARIANTS["t2"].bottlenecks:
            assert 2 * model_bytes <= int(row[f"bytes_{link}"]) < 2.5 * model_bytes, (link, row)
        assert float(row["must_cross_mb"]) == pytest.approx(2 * float(row["model_mb"]), rel=1e-4)
        # The limit: those bytes at 25 Mbit, the four links in parallel (not one after another).
        assert float(row["line_rate_seconds"]) == pytest.approx(
            2 * model_bytes * 8 / 25e6, rel=1e-4
        )
        assert float(row["comm_seconds"]) > 0.9 * float(row["line_rate_seconds"])
