"""The topology benchmark's machinery (``benchmarks/topology.py``) on T2, one small model, one
round, direct and Redis: every Pi's link carries at least the model down and the update up,
and the CSV files have the columns the docs name.

Needs root, ``ip``, ``tc``, OpenSSH and redis-server, like ``test_netlab.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmarks import topology

pytestmark = pytest.mark.slow

SUMMARY_COLUMNS = {
    "topology", "bottleneck", "model", "model_mb", "mode", "rounds", "must_cross_mb",
    "line_rate_seconds", "round_seconds", "comm_seconds", "aggregate_resolve_seconds",
    "bottleneck_mb_max", "bottleneck_mb_min", "copies_measured", "wire_seconds",
    "comm_over_line_rate", "comm_over_direct", "comm_over_redis", "round_over_t1_lan",
}  # fmt: skip


def test_t2_rounds_count_the_bytes_over_every_pi_link(tmp_path: Path) -> None:
    assert topology.main(
        ["--topology", "t2", "--models", "mobilenet-0.4", "--modes", "direct", "redis",
         "--reps", "1", "--rounds", "1", "--out", str(tmp_path)]
    ) == 0  # fmt: skip
    with open(tmp_path / "bench_topology_rounds.csv", newline="") as file:
        rounds = list(csv.DictReader(file))
    with open(tmp_path / "bench_topology.csv", newline="") as file:
        summary = list(csv.DictReader(file))
    assert (tmp_path / "bench_topology.png").stat().st_size > 0
    assert not SUMMARY_COLUMNS - set(summary[0])
    assert sorted(row["mode"] for row in summary) == ["direct", "redis"]
    assert sorted(row["mode"] for row in rounds) == ["direct", "redis"]
    for row in rounds:
        model_bytes = float(row["model_mb"]) * 1e6
        assert model_bytes > 2e6
        # Each Pi: the global model down and its update up, whatever the mode; Parsl's tasks,
        # ssh and the store's messages add a little, nothing crosses twice.
        for link in topology.VARIANTS["t2"].bottlenecks:
            assert 2 * model_bytes <= int(row[f"bytes_{link}"]) < 2.5 * model_bytes, (link, row)
        assert float(row["must_cross_mb"]) == pytest.approx(2 * float(row["model_mb"]), rel=1e-4)
        # The limit: those bytes at 25 Mbit, the four links in parallel (not one after another).
        assert float(row["line_rate_seconds"]) == pytest.approx(
            2 * model_bytes * 8 / 25e6, rel=1e-4
        )
        assert float(row["comm_seconds"]) > 0.9 * float(row["line_rate_seconds"])
