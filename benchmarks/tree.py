"""Aggregator trees in the network lab's T3 ("two labs"): flat rounds against tree rounds, the
bytes over each lab's 100 Mbit uplink beside the hop-count formula, and the round time.

    sudo python -m benchmarks.tree [--models mobilenet-1.0 resnet18] [--reps 2] [--rounds 1]
        [--modes redis endpoint tree-redis-lab tree-endpoint]

(from the project root, as root). The lab is ``benchmarks/topologies/t3-tree.yaml``: T3 plus a
group aggregator host in each lab (``agg-a``, ``agg-b``, on the lab's 1 Gbit LAN); flat modes
leave them idle. The round is the topology benchmark's (``benchmarks/topology.py``, which runs
it, interleaved with the modes rotated), with the sites' updates made to differ (site i sends
the global model plus (i + 1) x 1e-3), and in a tree the controller's own tree round:

- ``redis``, ``endpoint``: flat, every site's update to the root's aggregator;
- ``tree-redis-lab``: each lab's aggregator runs the lab's own Redis; it fetches the global
  model from the central Redis once, puts it in its lab's, its sites read and write there, it
  puts one partial (the sample-weighted mean) into the central Redis;
- ``tree-endpoint``: the same with ProxyStore endpoints (the lab aggregator's copy and partial
  live on its own endpoint).

A tree with one central Redis is not measured: each update would cross the uplink to it and
back to its group's aggregator.

The hop-count formula (Flight's): the bytes over a link in one direction are the model's size
times the number of copies whose path from the root to a site (down) or back (up) crosses it.
Flat: each of the ``n`` sites behind an uplink gets the model and sends its update, so ``n``
copies each way; a tree: only the lab's aggregator's copy and its partial cross, 1 each way.
Per round, with model size M and two labs of 4 sites: flat 4 M per uplink per direction
(16 M over the two uplinks), tree 1 M (4 M).

Each block's last global model is saved on the aggregator and compared here, after the run:
against the flat mode of the same store and repetition, and against the exact mean (the
initial weights plus the sample-weighted mean of the offsets, per round, in float64).

Writes ``docs/bench_tree.csv`` (medians per model and mode), ``docs/bench_tree_rounds.csv``
(every round) and ``docs/bench_tree.png``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    DOCS,
    SITE_OFFSET,
    SWEEP_MODELS,
    median,
    model_weights,
    print_machine,
    project_root_on_pythonpath,
    save_figure,
    write_csv,
)
from benchmarks.topology import (
    MODES,
    VARIANTS,
    LabMode,
    link_figures,
    measure_variant,
    print_targets,
    verdict,
)
from tests.infra.netlab import Topology

VARIANT = VARIANTS["t3-tree"]
#: About 13 and 45 MB of float32.
MODELS = ("mobilenet-1.0", "resnet18")
TREE_MODES = ("redis", "endpoint", "tree-redis-lab", "tree-endpoint")
#: Targets: each uplink carries at least 3.5x fewer bytes in a tree (4 sites per lab), and a
#: tree's round takes at most 0.4x the flat round's at ROUND_TARGET_MB.
BYTES_TARGET, ROUND_TARGET, ROUND_TARGET_MB = 3.5, 0.4, 40.0
#: A tree's model against flat's and the exact mean: float32 means taken in another order.
MODEL_TOLERANCE = 1e-5
#: The sample counts of the benchmark's sites (``offset_train``: 100 + site).
SAMPLES_BASE = 100


def flat_of(mode: LabMode) -> str | None:
    """The flat mode with the same store and codec as a tree mode (``None``: it is flat)."""
    if mode.tree is None:
        return None
    return next(
        name
        for name, other in MODES.items()
        if other.tree is None and other.store is mode.store
        and other.compression == mode.compression
    )  # fmt: skip


def hops(mode: LabMode, behind: int) -> int:
    """Copies of the model over a lab's uplink per round, each way (module docstring)."""
    return 1 if mode.tree is not None else behind


def uplink_figures(row: Mapping[str, Any], topology: Topology) -> dict[str, Any]:
    """Per uplink: MB up (out of the lab) and down, the formula's MB, measured / formula."""
    from benchmarks.topology import sites_behind

    mode = MODES[row["mode"]]
    figures: dict[str, Any] = {}
    for link in VARIANT.bottlenecks:
        copies = hops(mode, sites_behind(topology, link))
        formula = copies * row["model_mb"]
        # An uplink's first end is its lab: a_to_b leaves the lab.
        for direction, column in (("up", "a_to_b"), ("down", "b_to_a")):
            measured = row[f"bytes_{link}_{column}"] / 1e6
            figures[f"{link}_{direction}_mb"] = measured
            figures[f"{link}_{direction}_over_formula"] = measured / formula
        figures[f"{link}_hops"] = copies
        figures[f"{link}_formula_mb"] = formula
    return figures


def exact_model(model: str, rounds: int, sites: int) -> dict[str, np.ndarray]:
    """The global model after ``rounds`` rounds of ``offset_train`` updates, in float64
    (counters as they were)."""
    samples = np.arange(sites) + SAMPLES_BASE
    offset = float(np.sum(samples * (np.arange(sites) + 1) * SITE_OFFSET) / samples.sum())
    return {
        name: array.astype(np.float64) + (rounds * offset if array.dtype.kind == "f" else 0)
        for name, array in model_weights(model).items()
    }


def max_difference(path: Path, other: Mapping[str, np.ndarray]) -> float:
    """Largest absolute difference of a kept model's weights from ``other``'s."""
    with np.load(path) as kept:
        if set(kept.files) != set(other):
            raise AssertionError(f"{path.name}: other tensors than the reference's")
        return max(float(np.max(np.abs(kept[name] - other[name]), initial=0)) for name in other)


def compare_models(
    rows: list[dict[str, Any]], keep: Path, rounds: int, sites: int
) -> dict[tuple[str, str], dict[str, float]]:
    """Per (model, mode): the largest difference of its kept models from the exact mean and
    (tree modes) from its flat mode's of the same repetition."""
    blocks = sorted({(r["model"], r["mode"], r["rep"]) for r in rows})
    found: dict[tuple[str, str], dict[str, float]] = {}
    exact = {model: exact_model(model, rounds, sites) for model in {b[0] for b in blocks}}
    for model, mode, rep in blocks:
        path = keep / f"{model}-{mode}-{rep}.npz"
        entry = found.setdefault((model, mode), {"max_diff_exact": 0.0})
        entry["max_diff_exact"] = max(entry["max_diff_exact"], max_difference(path, exact[model]))
        flat = flat_of(MODES[mode])
        if flat is not None and (keep / f"{model}-{flat}-{rep}.npz").exists():
            with np.load(keep / f"{model}-{flat}-{rep}.npz") as reference:
                diff = max_difference(path, {name: reference[name] for name in reference.files})
            entry["max_diff_flat"] = max(entry.get("max_diff_flat", 0.0), diff)
    return found


#: A round's figures of which the summary keeps the median.
MEDIANS = ("round_seconds", "comm_seconds", "aggregate_seconds", "aggregate_resolve_seconds")


def summarize(
    rows: list[dict[str, Any]], models: Mapping[tuple[str, str], Mapping[str, float]]
) -> list[dict[str, Any]]:
    """Medians per model and mode, and each tree mode's ratios to its flat mode."""
    uplinks = VARIANT.bottlenecks
    per_link = [
        f"{link}_{what}"
        for link in uplinks
        for what in ("up_mb", "down_mb", "up_over_formula", "down_over_formula")
    ]
    summary: list[dict[str, Any]] = []
    for model, mode in dict.fromkeys((r["model"], r["mode"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["mode"]) == (model, mode)]
        entry: dict[str, Any] = {
            "model": model,
            "model_mb": mine[0]["model_mb"],
            "mode": mode,
            "tree": MODES[mode].tree is not None,
            "flat_mode": flat_of(MODES[mode]) or "",
            "rounds": len(mine),
        }
        entry |= {key: median([r[key] for r in mine]) for key in (*MEDIANS, *per_link)}
        entry["round_seconds_min"] = min(r["round_seconds"] for r in mine)
        entry["round_seconds_max"] = max(r["round_seconds"] for r in mine)
        entry["line_rate_seconds"] = mine[0]["line_rate_seconds"]
        for link in uplinks:
            entry[f"{link}_hops"] = mine[0][f"{link}_hops"]
            entry[f"{link}_formula_mb"] = mine[0][f"{link}_formula_mb"]
        entry |= models.get((model, mode), {})
        summary.append(entry)
    by_key = {(e["model"], e["mode"]): e for e in summary}
    for entry in summary:
        flat = by_key.get((entry["model"], entry["flat_mode"]))
        for link in uplinks:
            for direction in ("up", "down"):
                column = f"{link}_{direction}_fewer_bytes"
                entry[column] = (
                    flat[f"{link}_{direction}_mb"] / entry[f"{link}_{direction}_mb"] if flat else ""
                )
        entry["round_over_flat"] = entry["round_seconds"] / flat["round_seconds"] if flat else ""
    return summary


def targets(summary: list[dict[str, Any]]) -> list[str]:
    """Each target against what was measured, one line each."""
    lines = []
    for e in summary:
        if not e["tree"] or e["round_over_flat"] == "":
            continue
        where = f"{e['mode']} at {e['model_mb']:.1f} MB vs {e['flat_mode']}"
        fewest = min(
            e[f"{link}_{direction}_fewer_bytes"]
            for link in VARIANT.bottlenecks
            for direction in ("up", "down")
        )
        lines.append(
            f"{where}: {fewest:.2f}x fewer bytes on the worse uplink and direction (target >= "
            f"{BYTES_TARGET}x): " + ("met" if fewest >= BYTES_TARGET else
                                     f"MISSED by {BYTES_TARGET / fewest:.2f}x")
        )  # fmt: skip
        if e["model_mb"] >= ROUND_TARGET_MB:
            ratio = e["round_over_flat"]
            lines.append(
                f"{where}: round {ratio:.2f}x flat's (target <= {ROUND_TARGET}x): "
                + verdict(ratio, ROUND_TARGET)
            )
        for key, against in (("max_diff_flat", "flat's"), ("max_diff_exact", "the exact mean")):
            if key in e:
                lines.append(
                    f"{where}: model within {e[key]:.2e} of {against} (tolerance "
                    f"{MODEL_TOLERANCE:.0e}): " + ("met" if e[key] <= MODEL_TOLERANCE else "MISSED")
                )
    for e in summary:
        if not e["tree"] and "max_diff_exact" in e:
            lines.append(
                f"{e['mode']} at {e['model_mb']:.1f} MB (flat): model within "
                f"{e['max_diff_exact']:.2e} of the exact mean"
            )
    return lines


def report(summary: list[dict[str, Any]]) -> list[str]:
    """Print the table and the targets; return the target lines."""
    print(
        "\nmedian per round: MB over each uplink up (out of the lab) / down, beside the "
        "formula's (hops x model MB, each way); fewer = flat's bytes / the tree's (worse of "
        "the uplinks and directions); round and comm in seconds"
    )
    print(
        f"{'MB':>6} {'mode':<15}{'round':>8}{'comm':>8}{'a up':>8}{'a down':>8}{'b up':>8}"
        f"{'b down':>8}{'formula':>8}{'fewer':>7}{'vs flat':>8}"
    )
    for e in summary:
        fewer = (
            min(
                e[f"{link}_{d}_fewer_bytes"] for link in VARIANT.bottlenecks for d in ("up", "down")
            )
            if e["tree"] and e["round_over_flat"] != ""
            else float("nan")
        )
        ratio = e["round_over_flat"] if e["round_over_flat"] != "" else float("nan")
        print(
            f"{e['model_mb']:>6.1f} {e['mode']:<15}{e['round_seconds']:>8.2f}"
            f"{e['comm_seconds']:>8.2f}{e['uplink-a_up_mb']:>8.1f}{e['uplink-a_down_mb']:>8.1f}"
            f"{e['uplink-b_up_mb']:>8.1f}{e['uplink-b_down_mb']:>8.1f}"
            f"{e['uplink-a_formula_mb']:>8.1f}{fewer:>7.2f}{ratio:>8.2f}"
        )
    return print_targets(targets(summary))


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    """Per model: MB over uplink-a each way beside the formula, and the round time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(e["model"] for e in summary))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(models))
    for index, model in enumerate(models):
        mine = [e for e in summary if e["model"] == model]
        where = np.arange(len(mine)) + index * width
        label = f"{model} ({mine[0]['model_mb']:.0f} MB)"
        axes[0].bar(where, [e["uplink-a_up_mb"] + e["uplink-a_down_mb"] for e in mine], width,
                    label=f"{label}, measured", color=f"C{index}")  # fmt: skip
        axes[0].scatter(where, [2 * e["uplink-a_formula_mb"] for e in mine], color="black",
                        marker="_", s=400, label="formula" if index == 0 else None)  # fmt: skip
        axes[1].bar(where, [e["round_seconds"] for e in mine], width, label=label,
                    color=f"C{index}")  # fmt: skip
        for axis in axes:
            axis.set_xticks(np.arange(len(mine)) + width * (len(models) - 1) / 2)
            axis.set_xticklabels([e["mode"] for e in mine], rotation=15, fontsize=8)
    axes[0].set(ylabel="MB over uplink-a per round (both ways, median)",
                title="T3: bytes over a lab's 100 Mbit uplink")  # fmt: skip
    axes[1].set(ylabel="round time (s, median)", title="T3: round time, 8 sites")
    save_figure(figure, axes, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(SWEEP_MODELS), default=list(MODELS))
    parser.add_argument("--modes", nargs="+", choices=TREE_MODES, default=list(TREE_MODES))
    parser.add_argument("--reps", type=int, default=2, help="repetitions (interleaved)")
    parser.add_argument("--rounds", type=int, default=1, help="measured rounds per repetition")
    parser.add_argument("--warmup", type=int, default=0, help="unmeasured rounds per block")
    parser.add_argument("--out", type=Path, default=DOCS, help="where the CSV files and PNG go")
    args = parser.parse_args(argv)

    print_machine()
    project_root_on_pythonpath()  # before the inventory: the workers' PYTHONPATH comes from it
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="proxyflox-bench-tree-") as workdir:
        where = Path(workdir) / VARIANT.name
        measured, topology = measure_variant(
            VARIANT, [MODES[name] for name in args.modes], args.models, args.reps, args.rounds,
            args.warmup, where,
        )  # fmt: skip
        for row in measured:
            mode = MODES[row["mode"]]
            rows.append(
                row | link_figures(row, VARIANT, topology, mode) | uplink_figures(row, topology)
            )
        sites = len(topology.role("site"))
        models = compare_models(rows, where / "models", args.warmup + args.rounds, sites)
    summary = summarize(rows, models)
    report(summary)
    write_csv(args.out / "bench_tree_rounds.csv", rows)
    write_csv(args.out / "bench_tree.csv", summary)
    plot(summary, args.out / "bench_tree.png")
    print(f"\nwrote {args.out / 'bench_tree.csv'}, bench_tree_rounds.csv, bench_tree.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
