"""Aggregator trees: groups of sites with aggregators of their own, against flat runs.

Runs on threads (four sites, two group aggregators, the root) unless a real process has to die:
then one group's aggregator is a real worker pool, killed mid-run.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from proxyflox.controller import RunResult, plan_run
from proxyflox.errors import ConfigError
from proxyflox.results import read_rounds
from proxyflox.settings import experiment_from_dict, load_experiment
from proxyflox.sites import load_deployment
from proxyflox.strategies import STRATEGIES, FedAsync
from proxyflox.tree import TreeSettings, build_tree
from tests.helpers import DEFAULT_EXPERIMENT, only_run_dir, run_cli
from tests.servers import redis_keys, redis_server
from tests.test_faults import kill_worker_pool, start, wait_for_line
from tests.test_resume import comparable, straight_and_stopped

Runner = Callable[..., RunResult]

SITES = ["site-0", "site-1", "site-2", "site-3"]
LABELS = [*SITES, "lab-a", "lab-b", "aggregator"]
TWO_LABS = {
    "lab-a": {"aggregator": "lab-a", "sites": ["site-0", "site-1"]},
    "lab-b": {"aggregator": "lab-b", "sites": ["site-2", "site-3"]},
}


def write_config(directory: Path, tree: dict[str, Any], htex: tuple[str, ...] = ()) -> Path:
    """A config module of thread executors (``htex``: real worker pools) and its ``tree``."""
    path = directory / "labs.py"
    path.write_text(
        textwrap.dedent(f"""
        from parsl.config import Config
        from parsl.executors import ThreadPoolExecutor
        from proxyflox.executors import local_executor

        config = Config(
            executors=[
                local_executor(label) if label in {list(htex)!r}
                else ThreadPoolExecutor(label=label, max_threads=1)
                for label in {LABELS!r}
            ],
            strategy="none",
        )
        tree = {{"groups": {tree!r}}}
        """)
    )
    return path


def model_of(result: RunResult) -> dict[str, torch.Tensor]:
    return torch.load(result.run_dir / "model.pt")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest ``|a - b| / |b|`` over the tensors (a wrong mean is off by 1e-2 or more)."""
    assert a.keys() == b.keys()
    return max(float((a[name] - b[name]).norm() / b[name].norm()) for name in a)


def access_log(path: Path) -> tuple[set[str], set[str]]:
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    return {key for _, op, key in lines if op == "put"}, {
        key for _, op, key in lines if op == "evict"
    }


# -- settings ------------------------------------------------------------------------------------


def plan_for(tree: dict[str, Any], tmp_path: Path, **settings: Any) -> Any:
    experiment = experiment_from_dict({"tree": {"groups": tree}, **settings})
    return plan_run(experiment, load_deployment(str(write_config(tmp_path, {}))))


def test_a_tree_plans_its_groups_and_keeps_their_aggregators_off_the_sites(tmp_path: Path) -> None:
    plan = plan_for(TWO_LABS, tmp_path)
    assert plan.placement == tuple(SITES)
    assert plan.tree.aggregators() == ["lab-a", "lab-b"]
    assert plan.tree.group_of("site-2") == "lab-b"
    assert plan.tree.depth() == 2
    nested = {"lab-a": {**TWO_LABS["lab-a"], "groups": {"lab-b": TWO_LABS["lab-b"]}}}
    assert plan_for(nested, tmp_path).tree.depth() == 3
    # A config module's tree is the default; without one the run is flat.
    assert (
        load_deployment(str(write_config(tmp_path, TWO_LABS))).tree.groups.keys() == TWO_LABS.keys()
    )
    assert plan_run(experiment_from_dict({}), load_deployment("local.py")).tree is None


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"lab-a": {"aggregator": "lab-x", "sites": ["site-0"]}},
         "tree.groups.lab-a.aggregator: no executor labelled 'lab-x' in the Parsl config "
         "(did you mean"),
        ({"lab-a": {"aggregator": "lab-a", "sites": ["site-0", "site-9"]}},
         "tree.groups.lab-a.sites[1]: no executor labelled 'site-9'"),
        ({"lab-a": {"aggregator": "lab-a", "sites": ["site-0"]},
          "lab-b": {"aggregator": "lab-b", "sites": ["site-1", "site-0"]}},
         "tree.groups.lab-b.sites[1]: executor 'site-0' is already in the tree as "
         "tree.groups.lab-a.sites[0]"),
        ({"lab-a": {"aggregator": "lab-a", "sites": ["site-0"],
                    "groups": {"lab-b": {"aggregator": "lab-a", "sites": ["site-1"]}}}},
         "tree.groups.lab-a.groups.lab-b.aggregator: executor 'lab-a' is already in the tree as "
         "tree.groups.lab-a.aggregator; an executor belongs to one group, in one role (a group "
         "in its own subtree is a cycle)"),
        ({"lab-a": {"aggregator": "lab-a", "sites": ["site-0"],
                    "groups": {"lab-a": {"aggregator": "lab-b", "sites": ["site-1"]}}}},
         "tree.groups.lab-a.groups.lab-a: group name 'lab-a' is used twice"),
        ({"lab-a": {"aggregator": "aggregator", "sites": ["site-0"]}},
         "tree.groups.lab-a.aggregator: 'aggregator' is the run's aggregator, the root"),
        ({"lab-a": {"aggregator": "lab-a"}}, "tree.groups.lab-a: has no sites and no groups"),
        ({"lab-a": {"aggregator": "lab-a", "site": ["site-0"]}},
         "unknown key 'tree.groups.lab-a.site' (did you mean 'tree.groups.lab-a.sites'?)"),
    ],
)  # fmt: skip
def test_a_bad_tree_is_one_line_naming_the_group(
    tmp_path: Path, tree: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        plan_for(tree, tmp_path)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("robust", ["fedmedian", "fedtrimmedavg", "krum", "multikrum"])
def test_robust_strategies_are_refused_in_a_tree(robust: str) -> None:
    tree = TreeSettings.model_validate({"groups": TWO_LABS})
    with pytest.raises(ConfigError, match=rf"^tree: strategy {robust} needs every site's update"):
        build_tree(tree, LABELS, "aggregator", strategy=STRATEGIES[robust])


def test_strategies_that_cannot_take_partials_are_refused_in_a_tree(tmp_path: Path) -> None:
    tree = TreeSettings.model_validate({"groups": TWO_LABS})
    with pytest.raises(ConfigError, match=r"^tree: strategy dpfedavg bounds each site's share"):
        build_tree(tree, LABELS, "aggregator", strategy=STRATEGIES["dpfedavg"])
    with pytest.raises(ConfigError, match=r"^tree: strategy fedasync is asynchronous: it applies"):
        build_tree(tree, LABELS, "aggregator", strategy=FedAsync)
    with pytest.raises(ConfigError, match=r"^tree: strategy fedbuff is asynchronous"):
        plan_for(TWO_LABS, tmp_path, strategy={"name": "fedbuff"}, max_updates=4)
    assert build_tree(TreeSettings(), LABELS, "aggregator", strategy=STRATEGIES["krum"]) is None


def test_an_endpoint_keeping_every_object_is_refused_in_a_tree(tmp_path: Path) -> None:
    eps = tmp_path / "endpoints.yaml"
    uuid = "4da791b4-1f63-4bb0-9ed3-2d1e2c7e3a10"
    eps.write_text(f"relay: ws://127.0.0.1:1\nendpoints:\n  aggregator: {{uuid: {uuid}}}\n")
    store = {"backend": "endpoint", "endpoints_file": str(eps), "keep_on": "aggregator"}
    with pytest.raises(ConfigError, match=r"^store.keep_on: with an aggregator tree every group"):
        plan_for(TWO_LABS, tmp_path, store=store)
    multi = {"backend": "multi", "put": "wan", "connectors": {"wan": store}}
    with pytest.raises(ConfigError, match=r"^store.connectors.wan.keep_on: with an aggregator"):
        plan_for(TWO_LABS, tmp_path, store=multi)
    assert plan_for(TWO_LABS, tmp_path, store=store | {"keep_on": None}).tree is not None


# -- runs ----------------------------------------------------------------------------------------


@pytest.fixture
def run_labs(tmp_path: Path, run_local: Runner) -> Callable[..., RunResult]:
    """Run the default experiment on four thread sites, under the given tree."""

    def run(tree: dict[str, Any], **overrides: Any) -> RunResult:
        directory = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}"
        directory.mkdir()
        return run_local(str(write_config(directory, tree)), sites="4", **overrides)

    return run


def test_fedavg_in_two_labs_equals_flat_fedavg(run_local: Runner, run_labs: Runner) -> None:
    flat = run_local(rounds=2)
    labs = run_labs(TWO_LABS, rounds=2, **{"store.access_log": "true"})
    # Two groups sum in another order than one flat mean: round 1's models agree to float32
    # rounding (3e-8 measured); round 2's training from them grows that, by how much varies
    # from run to run (1.5e-5 to 1.2e-4 measured, at most 4.3e-4 of a tensor's norm). Every
    # round's evaluation agreed to 6 digits.
    assert relative_difference(model_of(labs), model_of(flat)) < 5e-3
    rows, flat_rows = read_rounds(labs.run_dir), read_rounds(flat.run_dir)
    for row, flat_row in zip(rows, flat_rows, strict=True):  # every round's evaluation
        assert float(row["loss"]) == pytest.approx(float(flat_row["loss"]), abs=1e-4)
        assert float(row["accuracy"]) == pytest.approx(float(flat_row["accuracy"]), abs=1e-3)
    assert [row["site_ids"] for row in rows] == ["0 1 2 3", "0 1 2 3"]
    assert [row["sent_bytes"] for row in rows] == [
        row["sent_bytes"] for row in read_rounds(flat.run_dir)
    ]
    # Per round: the global model, 4 updates, 2 partials; every object evicted.
    put, evicted = access_log(labs.run_dir / "store-access.log")
    assert len(put) == 1 + 2 * (1 + 4 + 2)
    assert put == evicted
    # One group holding every site sums in the flat order: bit for bit.
    one = run_labs({"all": {"aggregator": "lab-a", "sites": SITES}}, rounds=2)
    assert max_difference(model_of(one), model_of(flat)) == 0.0
    assert [row["accuracy"] for row in read_rounds(one.run_dir)] == [
        row["accuracy"] for row in read_rounds(flat.run_dir)
    ]


def test_fedadam_compressed_in_a_nested_tree_with_a_lab_store_equals_flat(
    run_local: Runner, run_labs: Runner, tmp_path: Path
) -> None:
    """FedAdam's step runs once at the root; int8 changes are decoded by the groups; lab-b,
    inside lab-a, has its own Redis, which its sites read the global model from."""
    common = {"rounds": 2, "strategy.name": "fedadam", "compression.codec": "int8",
              "clients_per_round": "3", "site_state_dir": str(tmp_path / "state")}  # fmt: skip
    flat = run_local(**common)
    with redis_server() as port:
        lab_b = {**TWO_LABS["lab-b"],
                 "store": {"backend": "redis", "port": port, "access_log": True}}  # fmt: skip
        nested = {"lab-a": {**TWO_LABS["lab-a"], "groups": {"lab-b": lab_b}}}
        tree = run_labs(nested, **common)
        assert redis_keys(port) == []
    # FedAdam divides by sqrt(v) + 1e-3, which magnifies float32 rounding (~1e-7) about 100x.
    assert relative_difference(model_of(tree), model_of(flat)) < 5e-3
    assert tree.final_accuracy == pytest.approx(flat.final_accuracy, abs=1e-3)
    rows, flat_rows = read_rounds(tree.run_dir), read_rounds(flat.run_dir)
    assert [row["site_ids"] for row in rows] == [row["site_ids"] for row in flat_rows]
    assert all(len(row["site_ids"].split()) == 3 for row in rows)
    # lab-b's store held its copies of the global model and its sites' updates, then nothing.
    put, evicted = access_log(tree.run_dir / "groups" / "lab-b" / "store-access.log")
    in_lab_b = [[site for site in row["site_ids"].split() if site in ("2", "3")] for row in rows]
    relays = sum(1 for sites in in_lab_b if sites)  # rounds in which lab-b had a sampled site
    assert relays > 0
    assert len(put) == relays + sum(len(sites) for sites in in_lab_b)
    assert put == evicted


def test_a_group_aggregates_the_sites_in_by_the_deadline(run_labs: Runner) -> None:
    labs = run_labs(
        TWO_LABS, rounds=2, round_deadline="4", min_clients="3",
        **{"site_options.site-3.local_epochs": "100"},
    )  # fmt: skip
    rows = read_rounds(labs.run_dir)
    assert [row["late_site_ids"] for row in rows] == ["3", "3"]
    # lab-b's partial holds site 2 alone, and still counts.
    assert [row["site_ids"] for row in rows] == ["0 1 2", "0 1 2"]


def test_a_killed_and_resumed_tree_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    config = str(write_config(tmp_path, TWO_LABS))
    common = ["--config", config, "--rounds", "3", "--strategy.name", "fedavgm",
              "--partition", "dirichlet", "--sites", "4"]  # fmt: skip
    straight_dir, stopped_dir = straight_and_stopped(common, tmp_path, 1)
    resumed = run_cli("--resume", str(stopped_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "round   1/3" not in resumed.stdout
    a, b = torch.load(straight_dir / "model.pt"), torch.load(stopped_dir / "model.pt")
    assert max_difference(a, b) == 0.0
    assert comparable(stopped_dir) == comparable(straight_dir)


@pytest.mark.slow
def test_a_lost_group_aggregator_loses_its_sites_and_the_run_goes_on(tmp_path: Path) -> None:
    config = write_config(tmp_path, TWO_LABS, htex=("lab-b",))
    process = start(
        ["--config", str(config), "--rounds", "3", "--sites", "4", "--min_clients", "2",
         "--site_options.site-3.local_epochs", "20", "--runs_dir", str(tmp_path / "runs")],
        tmp_path,
    )  # fmt: skip
    wait_for_line(process, "round   1/3")
    run_dir = only_run_dir(tmp_path / "runs")
    # Round 1's row is written once round 2 is aggregated: this is while round 3's sites train.
    kill_worker_pool(run_dir, "lab-b")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    rows = read_rounds(run_dir)
    assert [row["site_ids"] for row in rows] == ["0 1 2 3", "0 1 2 3", "0 1"]
    assert [row["failed_site_ids"] for row in rows] == ["", "", "2 3"]
    assert rows[2]["failures"].startswith("sites 2 3: group lab-b aggregator: ")


def test_default_experiment_reads_no_tree() -> None:
    assert load_experiment(DEFAULT_EXPERIMENT).tree.groups == {}
