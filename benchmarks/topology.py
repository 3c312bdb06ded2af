"""The transfer benchmark in the network lab: per-round communication of moving model weights
(direct through Parsl; file, Redis, endpoint stores; endpoints keeping every object on the
aggregator's; a ``multi`` store of Redis and endpoints) on the lab's three topologies, with the
bytes each bottleneck link carried and the line-rate limit they set.

    sudo python -m benchmarks.topology --topology t1|t2|t3|all [--models ...] [--modes ...]
        [--reps 3] [--rounds 1] [--quick]
    python -m benchmarks.topology --tables     # from the CSV: the docs' tables, targets, plot

(from the project root, as root: the lab is network namespaces). Each round is the round of
``benchmarks/transfer.py``: the global model to every site app, each resolves it and puts it
back as its update, the real aggregate app reads the updates one at a time, averages them and
puts the new global model; communication = round time - the aggregator's averaging time.
Here the controller runs inside the topology's controller host, each site and the aggregator
in their own hosts (worker pools started over ssh, ``parsl_configs/pis.py``), and the stores'
servers where the topology puts them:

- ``t1`` (controller away): the controller behind 50 Mbit; aggregator, 4 sites and store host
  on a 1 Gbit cluster LAN. Also measured as ``t1-lan``: the same with the controller's link at
  1 Gbit, the run the target compares with. ``file`` counts only here (the cluster's shared
  file system; the lab's namespaces share this machine's).
- ``t2`` (Pis on WiFi): each of 4 sites on its own 25 Mbit link; controller, aggregator and
  store host (Redis, the relay) on the host side.
- ``t3`` (two labs): two groups of 4 sites, each behind one shared 100 Mbit uplink.

Redis runs on the store host; ``endpoint`` is the ProxyStore relay on the store host and one
endpoint inside every other host; ``endpoint-keep`` adds ``store.keep_on: aggregator``; ``multi``
routes the aggregator and half the sites to Redis, the other half to endpoints. Per round the
lab's interface counters give the bytes over each bottleneck link (T1: the controller's link;
T2: each site's link; T3: each uplink), both ways together. The line-rate limit is the bytes
that must cross a bottleneck link in the round (the model's copies, :attr:`Variant.must_cross`)
over its rate, the slowest link of those in parallel; ``wire_seconds`` is the same for the bytes
that did cross. Modes run interleaved, their order rotated every repetition; figures are medians
of the measured rounds.

Writes ``docs/bench_topology.csv`` (medians per topology, model and mode),
``docs/bench_topology_rounds.csv`` (every round) and ``docs/bench_topology.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import (
    DOCS,
    ROOT,
    SWEEP_MODELS,
    median,
    offset_train,
    print_machine,
    project_root_on_pythonpath,
    read_csv,
    relay_train,
    save_figure,
    write_csv,
)
from benchmarks.transfer import ROUND_FIGURES, open_modes, run_interleaved
from tests.infra.netlab import LinkEnd, NetLab, Topology, load_topology, read_counters

TOPOLOGIES = ROOT / "benchmarks" / "topologies"
#: About 2, 13 and 45 MB of float32: transfer.py's MobileNet-like models and ResNet-18.
MODELS = ("mobilenet-0.4", "mobilenet-1.0", "resnet18")
AGGREGATOR = "aggregator"
#: Targets: T1 with proxies within 1.2x of the same run with the controller on the LAN; T2 and
#: T3 proxies within 1.3x of the line-rate limit from LARGE_MB on, never slower than direct at
#: ~2 MB, endpoints within 1.5x of Redis.
T1_TARGET, LINE_RATE_TARGET, ENDPOINT_VS_REDIS_TARGET = 1.2, 1.3, 1.5
LARGE_MB, SMALL_MB = 10.0, 3.0


# ----------------------------------------------------------------------------------------------
# Modes: store settings + optional compression + optional aggregator tree


def direct_store(lab: NetLab) -> dict[str, Any]:
    """Weights through Parsl itself (the baseline)."""
    return {"transfer": "direct"}


def file_store(lab: NetLab) -> dict[str, Any]:
    """A directory every host reads: the namespaces share this machine's file system, which
    stands for a cluster's shared one (so the mode counts only where a cluster has one)."""
    return {"store.backend": "file"}


def redis_store(lab: NetLab) -> dict[str, Any]:
    """redis-server on the topology's store host."""
    host, port = lab.start_redis()
    return {"store.backend": "redis", "store.host": host, "store.port": port}


def endpoint_store(lab: NetLab) -> dict[str, Any]:
    """The relay on the store host, an endpoint inside every other host."""
    return {"store.backend": "endpoint", "store.endpoints_file": str(lab.start_endpoints())}


def endpoint_kept_on_the_aggregator(lab: NetLab) -> dict[str, Any]:
    """Endpoints, every object kept on the aggregator's (``store.keep_on``): a site's update
    crosses its link as it is put, alongside the other sites' instead of after them."""
    return endpoint_store(lab) | {"store.keep_on": AGGREGATOR}


def multi_store(lab: NetLab) -> dict[str, Any]:
    """ProxyStore's ``MultiConnector`` with a route per executor: Redis on the store host
    (``lan``) for the aggregator and the first half of the sites, endpoints (``wan``) for the
    other half, as for sites whose objects must not go to the store host. The global model is
    in Redis, so every site reads it at its own link's rate; the ``wan`` sites' updates go to
    the aggregator's endpoint as they are put (``keep_on``), alongside the others'."""
    host, port = lab.start_redis()
    sites = lab.topology.role("site")
    behind_nat = sites[len(sites) // 2 :]
    return {
        "store.backend": "multi",
        "store.put": "lan",
        "store.connectors.lan.backend": "redis",
        "store.connectors.lan.host": host,
        "store.connectors.lan.port": port,
        "store.connectors.wan.backend": "endpoint",
        "store.connectors.wan.endpoints_file": str(lab.start_endpoints()),
        "store.connectors.wan.keep_on": AGGREGATOR,
    } | {f"site_options.{site}.store_put": "wan" for site in behind_nat}


@dataclass(frozen=True)
class LabMode:
    """One way of moving weights in the lab: a store (a function that starts its servers in
    the lab and returns its experiment settings), plus settings of a codec and of an
    aggregator tree, each optional, joined into one experiment."""

    name: str
    store: Callable[[NetLab], dict[str, Any]]
    #: ``compression.*`` settings (e.g. ``{"compression.codec": "fp16"}``).
    compression: Mapping[str, str] = field(default_factory=dict)
    #: An aggregator tree: a function that starts the groups' servers in the lab and returns
    #: the ``tree.groups`` setting (``None``: flat).
    tree: Callable[[NetLab], dict[str, Any]] | None = None
    #: The variants where it counts (``None``: all).
    only_in: tuple[str, ...] | None = None

    @property
    def direct(self) -> bool:
        """Weights through Parsl."""
        return self.store is direct_store

    def settings(self, lab: NetLab) -> dict[str, Any]:
        """The mode's experiment settings, its servers started in ``lab``."""
        tree = self.tree(lab) if self.tree is not None else {}
        return self.store(lab) | dict(self.compression) | tree


def lab_groups(lab: NetLab) -> dict[str, dict[str, Any]]:
    """One group per lab: each ``group`` host aggregates the sites on its switch."""
    topology = lab.topology
    groups = {}
    for host in topology.role("group"):
        (switch,) = (end for end in topology.links[topology.link_of(host)].ends if end != host)
        sites = [site for site in topology.role("site") if switch in topology.links[
            topology.link_of(site)].ends]  # fmt: skip
        groups[switch] = {"aggregator": host, "sites": sites}
    return groups


def tree_sharing_the_store(lab: NetLab) -> dict[str, Any]:
    """Each lab's aggregator reads and writes the run's store (endpoints: its own endpoint)."""
    return {"tree.groups": lab_groups(lab)}


def tree_with_lab_redis(lab: NetLab) -> dict[str, Any]:
    """Each lab's aggregator runs its lab's own Redis, where its sites read and write."""
    groups = lab_groups(lab)
    for group in groups.values():
        host, port = lab.start_redis(group["aggregator"])
        group["store"] = {"backend": "redis", "host": host, "port": port}
    return {"tree.groups": groups}


T3_TREE = ("t3-tree",)
#: The stores with endpoints in them, which the "within 1.5x of Redis" target is about.
ENDPOINT_STORES = (endpoint_store, endpoint_kept_on_the_aggregator, multi_store)

#: Every mode, in the order they rotate. A new mode is one more entry: a codec or a tree is
#: ``LabMode("redis-fp16", redis_store, compression={...})``.
MODES: dict[str, LabMode] = {
    mode.name: mode
    for mode in (
        LabMode("direct", direct_store),
        LabMode("file", file_store, only_in=("t1", "t1-lan")),
        LabMode("redis", redis_store),
        LabMode("endpoint", endpoint_store),
        LabMode("endpoint-keep", endpoint_kept_on_the_aggregator),
        # Trees, where a lab has a group aggregator: with one Redis for everyone the sites'
        # updates would cross the uplink to it and back to their group, so not that one.
        LabMode("tree-redis-lab", redis_store, tree=tree_with_lab_redis, only_in=T3_TREE),
        LabMode("tree-endpoint", endpoint_store, tree=tree_sharing_the_store, only_in=T3_TREE),
        LabMode("multi", multi_store),
    )
}


# ----------------------------------------------------------------------------------------------
# Topologies as measured


@dataclass(frozen=True)
class Variant:
    """A topology as the benchmark measures it: its file, rates overridden on some links, the
    bottleneck links, and how many copies of the model must cross each of them per round."""

    name: str
    file: str
    bottlenecks: tuple[str, ...]
    #: (mode, sites behind the link, all sites) -> copies of the model that must cross the
    #: link per round, both ways together (a round's phases follow one another).
    must_cross: Callable[[LabMode, int, int], float]
    rates: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    #: Sites send updates that differ (``offset_train``) and each block's last global model is
    #: kept, so that modes' models can be compared (trees against flat).
    compare_models: bool = False

    def topology_file(self, workdir: Path) -> Path:
        """The topology file, with this variant's rates (written to ``workdir`` if any)."""
        path = TOPOLOGIES / f"{self.file}.yaml"
        if not self.rates:
            return path
        data = yaml.safe_load(path.read_text())
        data["name"] = self.name
        for link, rate in self.rates.items():
            data["links"][link]["rate"] = rate
        changed = workdir / f"{self.name}.yaml"
        changed.write_text(yaml.safe_dump(data, sort_keys=False))
        return changed


def controller_copies(mode: LabMode, behind: int, sites: int) -> float:
    """T1's controller link: direct sends the model to each site and takes its update back,
    sends the global model and every update into the aggregate task and takes the new model
    back (4 + 4 + 5 + 1 = 14 for 4 sites); with proxies only references cross."""
    return 3 * sites + 2 if mode.direct else 0.0


def site_copies(mode: LabMode, behind: int, sites: int) -> float:
    """A link with ``behind`` sites behind it: the global model down to each, each update up."""
    return 2.0 * behind


def tree_copies(mode: LabMode, behind: int, sites: int) -> float:
    """A lab's uplink: flat as :func:`site_copies`; in a tree the global model down to the
    lab's aggregator once, its one partial up."""
    return 2.0 if mode.tree is not None else site_copies(mode, behind, sites)


VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        Variant("t1", "t1", ("controller",), controller_copies,
                description="controller away: controller behind 50 Mbit"),
        Variant("t1-lan", "t1", ("controller",), controller_copies, {"controller": "1gbit"},
                description="T1 with the controller on the cluster LAN (1 Gbit)"),
        Variant("t2", "t2", tuple(f"wifi-{i}" for i in range(4)), site_copies,
                description="Pis on WiFi: each site on its own 25 Mbit link"),
        Variant("t3", "t3", ("uplink-a", "uplink-b"), site_copies,
                description="two labs: 4 sites behind each shared 100 Mbit uplink"),
        Variant("t3-tree", "t3-tree", ("uplink-a", "uplink-b"), tree_copies,
                description="two labs, an aggregator in each (flat runs leave it idle)",
                compare_models=True),
    )
}  # fmt: skip
#: What ``--topology`` names: T1 is measured with its LAN variant, which its target needs.
CHOICES = {"t2": ["t2"], "t3": ["t3"], "t1": ["t1", "t1-lan"]}
CHOICES["all"] = [name for names in CHOICES.values() for name in names]
#: Trees (``python -m benchmarks.tree``), not in ``all``.
CHOICES["t3-tree"] = ["t3-tree"]


def sites_behind(topology: Topology, link: str) -> int:
    """Site hosts on the side of the link's first end, once the link is cut."""
    start = topology.links[link].ends[0]
    reached, todo = {start}, [start]
    while todo:
        node = todo.pop()
        for name, other_link in topology.links.items():
            if name != link and node in other_link.ends:
                other = other_link.ends[1] if other_link.ends[0] == node else other_link.ends[0]
                if other not in reached:
                    reached.add(other)
                    todo.append(other)
    return sum(1 for host in topology.role("site") if host in reached)


# ----------------------------------------------------------------------------------------------
# Inside the controller's host


@dataclass
class ControllerJob:
    """What the controller's process inside the lab runs (written as JSON)."""

    variant: str
    inventory: str
    settings: dict[str, dict[str, Any]]  # per mode
    models: list[str]
    reps: int
    rounds: int
    warmup: int
    links: list[str]  # the bottleneck links
    ends: dict[str, list[Any]]  # LinkEnd fields per link
    workdir: str
    rows: str  # where the rows go (JSON)
    #: Where each block's last global model is saved (``None``: nowhere); set, the sites'
    #: updates differ (``offset_train``).
    keep: str | None = None


def run_controller(job: ControllerJob) -> None:
    """The rounds of every model and mode, run from the controller's host; rows to JSON."""
    from proxyflox.inventory import INVENTORY_ENV
    from proxyflox.sites import load_deployment, site_executor_labels
    from tests.infra.netlab import traffic_since

    os.environ[INVENTORY_ENV] = job.inventory
    project_root_on_pythonpath()  # the workers unpickle the benchmark's app bodies
    deployment = load_deployment("pis.py")
    deployment.parsl_config.initialize_logging = False  # a DEBUG log costs the 2 cores
    labels = site_executor_labels(deployment.parsl_config, AGGREGATOR)
    ends = {link: LinkEnd(*end) for link, end in job.ends.items()}

    def probe() -> Callable[[], dict[str, Any]]:
        before = read_counters(ends)

        def finish() -> dict[str, Any]:
            moved = traffic_since(before, read_counters(ends))
            return {
                column: count
                for link in job.links
                for column, count in (
                    (f"bytes_{link}", moved[link].total),
                    (f"bytes_{link}_a_to_b", moved[link].a_to_b),
                    (f"bytes_{link}_b_to_a", moved[link].b_to_a),
                )
            }

        return finish

    with ExitStack() as stack:
        modes = open_modes(
            list(job.settings),
            deployment,
            Path(job.workdir),
            stack,
            [*labels, AGGREGATOR],
            overrides_of=lambda name: job.settings[name],
            train=offset_train if job.keep is not None else relay_train,
        )
        keep = Path(job.keep) if job.keep is not None else None

        def save_rows(rows: list[dict[str, Any]]) -> None:
            # After every block: a controller killed later (out of memory) leaves its rows.
            Path(job.rows).write_text(json.dumps([{"topology": job.variant} | r for r in rows]))

        run_interleaved(
            modes, AGGREGATOR, job.models, job.reps, job.rounds, job.warmup, probe, save_rows,
            keep,
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Outside: the lab, and the figures


def measure_variant(
    variant: Variant,
    modes: list[LabMode],
    models: list[str],
    reps: int,
    rounds: int,
    warmup: int,
    workdir: Path,
) -> tuple[list[dict[str, Any]], Topology]:
    """Build the variant's lab, start the modes' servers, run the controller in its host.

    A variant that compares models keeps each block's last one in ``workdir / "models"``."""
    workdir.mkdir(parents=True)
    keep = workdir / "models" if variant.compare_models else None
    if keep is not None:
        keep.mkdir()
    topology = load_topology(variant.topology_file(workdir))
    sites = {"sites": len(topology.role("site"))}  # a group's aggregator hosts none
    mine = [m for m in modes if m.only_in is None or variant.name in m.only_in]
    print(f"\n== {variant.name}: {variant.description}; modes {', '.join(m.name for m in mine)}")
    with NetLab(topology, workdir / "lab") as lab:
        job = ControllerJob(
            variant=variant.name,
            inventory=str(lab.write_inventory(workdir / "pis.yaml")),
            settings={mode.name: sites | mode.settings(lab) for mode in mine},
            models=models,
            reps=reps,
            rounds=rounds,
            warmup=warmup,
            links=list(variant.bottlenecks),
            ends={link: list(asdict(end).values()) for link, end in lab.link_ends.items()},
            workdir=str(workdir / "controller"),
            rows=str(workdir / "rows.json"),
            keep=str(keep) if keep is not None else None,
        )
        job_file = workdir / "job.json"
        job_file.write_text(json.dumps(asdict(job)))
        command = [sys.executable, "-m", "benchmarks.topology", "--controller-job", str(job_file)]
        done = subprocess.run(lab.command("controller", command), cwd=ROOT, check=False)
    rows: list[dict[str, Any]] = []
    if Path(job.rows).exists():
        rows = json.loads(Path(job.rows).read_text())
    if done.returncode != 0:
        print(f"{variant.name}: the controller exited with {done.returncode}; kept its "
              f"{len(rows)} rounds", flush=True)  # fmt: skip
    return rows, topology


def link_figures(
    row: Mapping[str, Any], variant: Variant, topology: Topology, mode: LabMode
) -> dict[str, float]:
    """A round's bytes over the bottleneck links, what had to cross them, and the seconds
    each takes at line rate (the slowest of the links in parallel)."""
    sites = len(topology.role("site"))
    model_bytes = row["model_mb"] * 1e6
    measured, must, wire, limit = [], [], [], []
    for link in variant.bottlenecks:
        rate = topology.links[link].bits_per_second
        assert rate is not None, f"{variant.name}: bottleneck {link} has no rate"
        copies = variant.must_cross(mode, sites_behind(topology, link), sites)
        measured.append(row[f"bytes_{link}"])
        must.append(copies * model_bytes)
        wire.append(row[f"bytes_{link}"] * 8 / rate)
        limit.append(copies * model_bytes * 8 / rate)
    return {
        "bottleneck_mb_max": max(measured) / 1e6,
        "bottleneck_mb_min": min(measured) / 1e6,
        "must_cross_mb": max(must) / 1e6,
        "copies_measured": max(measured) / model_bytes,
        "line_rate_seconds": max(limit),
        "wire_seconds": max(wire),
    }


#: A round's figures of which the summary keeps the median.
SUMMED = (
    *ROUND_FIGURES,
    "bottleneck_mb_max",
    "bottleneck_mb_min",
    "copies_measured",
    "wire_seconds",
)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per variant, model and mode, with each mode's ratios to its references."""
    summary: list[dict[str, Any]] = []
    keys = list(dict.fromkeys((r["topology"], r["model"], r["mode"]) for r in rows))
    for variant, model, mode in keys:
        mine = [r for r in rows if (r["topology"], r["model"], r["mode"]) == (variant, model, mode)]
        entry: dict[str, Any] = {
            "topology": variant,
            "bottleneck": " ".join(VARIANTS[variant].bottlenecks),
            "model": model,
            "model_mb": mine[0]["model_mb"],
            "mode": mode,
            "rounds": len(mine),
            "must_cross_mb": mine[0]["must_cross_mb"],
            "line_rate_seconds": mine[0]["line_rate_seconds"],
        }
        entry |= {key: median([r[key] for r in mine]) for key in SUMMED}
        entry["comm_seconds_min"] = min(r["comm_seconds"] for r in mine)
        entry["comm_seconds_max"] = max(r["comm_seconds"] for r in mine)
        summary.append(entry)
    by_key = {(e["topology"], e["model"], e["mode"]): e for e in summary}
    for entry in summary:
        variant, model = entry["topology"], entry["model"]
        limit = entry["line_rate_seconds"]
        entry["comm_over_line_rate"] = entry["comm_seconds"] / limit if limit > 0 else ""
        direct = by_key.get((variant, model, "direct"))
        entry["comm_over_direct"] = entry["comm_seconds"] / direct["comm_seconds"] if direct else ""
        redis = by_key.get((variant, model, "redis"))
        entry["comm_over_redis"] = entry["comm_seconds"] / redis["comm_seconds"] if redis else ""
        lan = by_key.get(("t1-lan", model, entry["mode"])) if variant == "t1" else None
        entry["round_over_t1_lan"] = entry["round_seconds"] / lan["round_seconds"] if lan else ""
    return summary


def verdict(value: float, target: float) -> str:
    """``met``, or by how much it missed (as a ratio)."""
    return "met" if value <= target else f"MISSED by {value / target:.2f}x"


def targets(summary: list[dict[str, Any]]) -> list[str]:
    """Each target against what was measured, one line each."""
    lines = []
    for e in summary:
        where = f"{e['topology']} {e['mode']} at {e['model_mb']:.1f} MB"
        proxy = e["mode"] != "direct"
        if e["topology"] == "t1" and e["round_over_t1_lan"] != "":
            ratio = e["round_over_t1_lan"]
            if proxy:
                lines.append(
                    f"{where}: round {ratio:.2f}x the controller-on-LAN round (target <= "
                    f"{T1_TARGET}x): {verdict(ratio, T1_TARGET)}"
                )
            else:
                lines.append(
                    f"{where}: round {ratio:.2f}x the controller-on-LAN round; "
                    f"{e['copies_measured']:.1f} models crossed the controller's link"
                )
        if e["topology"] not in ("t2", "t3") or not proxy:
            continue
        if e["model_mb"] >= LARGE_MB:
            ratio = e["comm_over_line_rate"]
            lines.append(
                f"{where}: comm {ratio:.2f}x the line-rate limit (target <= {LINE_RATE_TARGET}x): "
                + verdict(ratio, LINE_RATE_TARGET)
            )
        if e["model_mb"] <= SMALL_MB and e["comm_over_direct"] != "":
            ratio = e["comm_over_direct"]
            lines.append(
                f"{where}: comm {ratio:.2f}x direct's (target: never slower, <= 1x): "
                + verdict(ratio, 1.0)
            )
        if MODES[e["mode"]].store in ENDPOINT_STORES and e["comm_over_redis"] != "":
            ratio = e["comm_over_redis"]
            lines.append(
                f"{where}: comm {ratio:.2f}x Redis's (target <= {ENDPOINT_VS_REDIS_TARGET}x): "
                + verdict(ratio, ENDPOINT_VS_REDIS_TARGET)
            )
    return lines


def report(summary: list[dict[str, Any]]) -> list[str]:
    """Print the table and the targets; return the target lines."""
    print(
        "\nmedian per round: comm = round - averaging (s); link MB = bytes over the busiest "
        "bottleneck link, both ways; limit = model copies that must cross / rate (s); wire = "
        "measured bytes / rate (s); agg get = the aggregator's update reads (s)"
    )
    print(
        f"{'topology':<8}{'MB':>6} {'mode':<9}{'round':>8}{'comm':>8}{'limit':>8}{'wire':>8}"
        f"{'link MB':>9}{'copies':>7}{'site get':>9}{'site put':>9}{'agg get':>9}"
    )
    for e in summary:
        print(
            f"{e['topology']:<8}{e['model_mb']:>6.1f} {e['mode']:<9}{e['round_seconds']:>8.2f}"
            f"{e['comm_seconds']:>8.2f}{e['line_rate_seconds']:>8.2f}{e['wire_seconds']:>8.2f}"
            f"{e['bottleneck_mb_max']:>9.1f}{e['copies_measured']:>7.2f}"
            f"{e['site_resolve_seconds_max']:>9.2f}{e['site_put_seconds_max']:>9.2f}"
            f"{e['aggregate_resolve_seconds']:>9.2f}"
        )
    return print_targets(targets(summary))


def markdown_tables(summary: list[dict[str, Any]]) -> str:
    """The summary as ``docs/benchmarks.md`` shows it: a table per topology."""
    dash, times = "\u2013", "\u00d7"  # the docs' typography
    columns = (
        f"model | MB | mode | comm [min{dash}max] | limit | comm ÷ limit | MB over the busiest "
        "bottleneck link (copies) | wire | sites: get (slowest) | sites: put | aggregator: get "
        "{updates} updates | averaging"
    )
    parts = []
    order = list(MODES)
    for variant in [name for name in VARIANTS if any(e["topology"] == name for e in summary)]:
        mine = sorted(
            (e for e in summary if e["topology"] == variant),
            key=lambda e: (e["model_mb"], order.index(e["mode"])),
        )
        sites = len(load_topology(TOPOLOGIES / f"{VARIANTS[variant].file}.yaml").role("site"))
        header = columns.format(updates=sites)
        lines = [
            f"**{variant}** (bottleneck: {mine[0]['bottleneck']})",
            "",
            f"| {header} |",
            "| " + " | ".join("---" if i in (0, 2) else "---:" for i in range(12)) + " |",
        ]
        for e in mine:
            limit = e["comm_over_line_rate"]
            cells = (
                e["model"], f"{e['model_mb']:.1f}", e["mode"],
                f"{e['comm_seconds']:.2f} s [{e['comm_seconds_min']:.2f}{dash}"
                f"{e['comm_seconds_max']:.2f}]",
                f"{e['line_rate_seconds']:.2f} s", f"{limit:.2f}{times}" if limit != "" else dash,
                f"{e['bottleneck_mb_max']:.1f} ({e['copies_measured']:.2f})",
                f"{e['wire_seconds']:.2f} s", f"{e['site_resolve_seconds_max']:.2f}",
                f"{e['site_put_seconds_max']:.2f}", f"{e['aggregate_resolve_seconds']:.2f}",
                f"{e['aggregate_seconds']:.3f}",
            )  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def print_targets(lines: list[str]) -> list[str]:
    """Print a benchmark's verdicts under ``targets:``; return them."""
    print("\ntargets:")
    for line in lines:
        print("  " + line)
    return lines


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    """Per variant: communication per round against model size, each mode beside the
    line-rate limits (dashed: direct's, dotted: the proxies')."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(e["topology"] for e in summary))
    figure, axes = plt.subplots(1, len(variants), figsize=(4.5 * len(variants), 4), squeeze=False)
    for axis, variant in zip(axes[0], variants, strict=True):
        mine = [e for e in summary if e["topology"] == variant]
        for index, mode in enumerate(MODES):
            points = sorted((e for e in mine if e["mode"] == mode), key=lambda e: e["model_mb"])
            if not points:
                continue
            mb = [e["model_mb"] for e in points]
            axis.plot(mb, [e["comm_seconds"] for e in points], marker="o", color=f"C{index}",
                      label=mode)  # fmt: skip
            if mode in ("direct", "redis") and any(e["line_rate_seconds"] > 0 for e in points):
                whose = "direct" if mode == "direct" else "proxies"
                axis.plot(mb, [e["line_rate_seconds"] for e in points], color="black",
                          linestyle="--" if mode == "direct" else ":",
                          label=f"line-rate limit ({whose})")  # fmt: skip
        axis.set(xscale="log", yscale="log", xlabel="model size (MB)",
                 ylabel="communication per round (s, median)",
                 title=f"{variant}: {VARIANTS[variant].description}")  # fmt: skip
        axis.title.set_fontsize(8)
        axis.set_xticks([2, 5, 10, 20, 50], ["2", "5", "10", "20", "50"])
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    save_figure(figure, axes[0], path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", choices=list(CHOICES), default="all")
    parser.add_argument("--models", nargs="+", choices=list(SWEEP_MODELS), default=list(MODELS))
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--reps", type=int, default=3, help="repetitions (interleaved)")
    parser.add_argument("--rounds", type=int, default=1, help="measured rounds per repetition")
    parser.add_argument("--warmup", type=int, default=0, help="unmeasured rounds per block")
    parser.add_argument(
        "--quick", action="store_true", help="the smallest model, one repetition (development)"
    )
    parser.add_argument("--out", type=Path, default=DOCS, help="where the CSV files and PNG go")
    parser.add_argument(
        "--tables", action="store_true",
        help="from the CSV in --out: print the docs' tables and the targets, redraw the plot",
    )  # fmt: skip
    parser.add_argument("--controller-job", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.controller_job is not None:  # inside the controller's host
        run_controller(ControllerJob(**json.loads(args.controller_job.read_text())))
        return 0
    if args.tables:
        summary = summarize(read_csv(args.out / "bench_topology_rounds.csv"))
        print(markdown_tables(summary))
        print_targets(targets(summary))
        plot(summary, args.out / "bench_topology.png")
        return 0
    if args.quick:
        args.models, args.reps = args.models[:1], 1

    print_machine()
    project_root_on_pythonpath()  # before the inventory: the workers' PYTHONPATH comes from it
    modes = [MODES[name] for name in args.modes]
    measured_now = CHOICES[args.topology]
    # Rounds of other topologies and modes stay: one of them can be measured again on its own.
    rows = [
        row
        for row in read_csv(args.out / "bench_topology_rounds.csv")
        if row["topology"] not in measured_now or row["mode"] not in args.modes
    ]
    with tempfile.TemporaryDirectory(prefix="proxyflox-bench-topology-") as workdir:
        for name in measured_now:
            variant = VARIANTS[name]
            measured, topology = measure_variant(
                variant, modes, args.models, args.reps, args.rounds, args.warmup,
                Path(workdir) / name,
            )  # fmt: skip
            for row in measured:
                rows.append(row | link_figures(row, variant, topology, MODES[row["mode"]]))
            # After each topology: a later one's failure leaves what was measured before it.
            write_csv(args.out / "bench_topology_rounds.csv", rows)
            write_csv(args.out / "bench_topology.csv", summarize(rows))
    summary = summarize(rows)
    report(summary)
    plot(summary, args.out / "bench_topology.png")
    print(f"\nwrote {args.out / 'bench_topology.csv'}, bench_topology_rounds.csv, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
