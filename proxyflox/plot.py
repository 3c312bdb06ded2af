"""PNG plots of finished runs, from the CSV files in their run directories.

    python -m proxyflox.plot RUN_DIR                      # the run's own plots, into RUN_DIR
    python -m proxyflox.plot RUN_A RUN_B [--out FILE]     # the runs compared on one figure

A run writes its own plots when it finishes: ``accuracy.png`` (accuracy and loss per round),
``times.png`` (each round's time, stacked by phase) and ``partition.png`` (samples per class per
site). Figures are drawn on matplotlib's Agg canvas, without pyplot: no display and no global
state, so plotting works on headless machines and inside a running workflow.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from proxyflox.results import read_partition, read_rounds

#: The phases of a round's time and the ``rounds.csv`` columns each is the sum of. Sites work in
#: parallel, so a site phase is its slowest site's time.
PHASES: dict[str, tuple[str, ...]] = {
    "train": ("train_seconds_max",),
    "transfer": (
        "resolve_seconds_max",
        "put_seconds_max",
        "aggregate_resolve_seconds",
        "aggregate_put_seconds",
    ),
    "aggregate": ("aggregate_seconds",),
    "evaluate": ("evaluate_seconds",),
}
#: What the phases do not account for in the controller's round time (scheduling, waiting).
OTHER = "other"
#: Legend text of each phase.
PHASE_LABELS = {
    "train": "train (slowest site)",
    "transfer": "transfer (store reads and writes)",
    "aggregate": "aggregate",
    "evaluate": "evaluate (global test set)",
    OTHER: "other (scheduling, waiting)",
}
PHASE_COLORS = {
    "train": "tab:blue",
    "transfer": "tab:orange",
    "aggregate": "tab:green",
    "evaluate": "tab:red",
    OTHER: "lightgray",
}
DPI = 120


@dataclass(frozen=True)
class Run:
    """One run's per-round numbers, read from its ``rounds.csv``."""

    name: str
    rounds: list[int]
    columns: dict[str, list[float]]

    def series(self, column: str) -> list[float]:
        """A column's values per round (NaN where missing, e.g. in older runs)."""
        return self.columns.get(column, [math.nan] * len(self.rounds))

    def elapsed(self) -> list[float]:
        """Seconds from the first round's start to the end of each round.

        The running sum of ``round_seconds`` (synchronous runs), or ``seconds`` (asynchronous
        runs' clock).
        """
        if "seconds" in self.columns:
            return self.series("seconds")
        return list(itertools.accumulate(_zero_if_nan(v) for v in self.series("round_seconds")))

    def phase_seconds(self) -> dict[str, list[float]]:
        """Seconds per phase per round, with ``other`` = round time minus the phases."""
        phases: dict[str, list[float]] = {}
        for phase, columns in PHASES.items():
            per_column = [self.series(column) for column in columns]
            phases[phase] = [
                sum(_zero_if_nan(value) for value in values)
                for values in zip(*per_column, strict=True)
            ]
        accounted = [sum(values) for values in zip(*phases.values(), strict=True)]
        phases[OTHER] = [
            max(0.0, _zero_if_nan(total) - part)
            for total, part in zip(self.series("round_seconds"), accounted, strict=True)
        ]
        return phases


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory's ``rounds.csv``.

    Raises:
        FileNotFoundError: no ``rounds.csv`` there.
        ValueError: it holds no finished round.
    """
    path = Path(run_dir)
    if not (path / "rounds.csv").is_file():
        raise FileNotFoundError(f"{path} has no rounds.csv; is it a run directory?")
    rows = read_rounds(path)
    if not rows:
        raise ValueError(f"{path}/rounds.csv holds no finished round")
    columns: dict[str, list[float]] = {}
    for name in rows[0]:
        if name == "site_ids":
            continue
        columns[name] = [_number(row.get(name)) for row in rows]
    return Run(path.resolve().name, [int(row["round"]) for row in rows], columns)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write a run's plots into its directory; return their paths."""
    directory = Path(run_dir)
    run = load_run(directory)
    written = [
        _save(_accuracy_figure(run), directory / "accuracy.png"),
        _save(_times_figure(run), directory / "times.png"),
    ]
    partition = read_partition(directory)
    if partition:
        written.append(_save(_partition_figure(run.name, partition), directory / "partition.png"))
    return written


def plot_comparison(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Several runs on one figure.

    Accuracy per round (global version for asynchronous runs) and against wall time, loss per
    round, mean time per round by phase.
    """
    runs = [load_run(directory) for directory in run_dirs]
    figure = Figure(figsize=(15, 8.4), layout="constrained")
    (accuracy, by_time), (loss, times) = figure.subplots(2, 2)
    for run in runs:
        accuracy.plot(run.rounds, run.series("accuracy"), marker="o", markersize=3, label=run.name)
        by_time.plot(
            run.elapsed(), run.series("accuracy"), marker="o", markersize=3, label=run.name
        )
        loss.plot(run.rounds, run.series("loss"), marker="o", markersize=3, label=run.name)
    by_time.set_title("accuracy against wall time")
    by_time.set_xlabel("seconds since the first round started")
    by_time.set_ylabel("accuracy")
    by_time.grid(alpha=0.3)
    by_time.legend(fontsize="small")
    _label(accuracy, "accuracy on the global test set", "accuracy")
    _label(loss, "loss on the global test set", "loss")
    accuracy.legend(fontsize="small")
    longest = max((run.rounds for run in runs), key=len)
    for axes in (accuracy, loss):
        _integer_rounds(axes, longest)
    means = [
        {phase: sum(values) / len(values) for phase, values in run.phase_seconds().items()}
        for run in runs
    ]
    positions = list(range(len(runs)))
    bottom = [0.0] * len(runs)
    for phase, color in PHASE_COLORS.items():
        heights = [mean[phase] for mean in means]
        times.bar(positions, heights, bottom=bottom, color=color, label=phase, width=0.6)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    times.set_xticks(positions, [run.name for run in runs], rotation=20, ha="right")
    times.tick_params(axis="x", labelsize="small")
    times.set_ylabel("seconds per round (mean)")
    times.set_title("time per round by phase")
    times.legend(fontsize="small")
    times.grid(axis="y", alpha=0.3)
    figure.suptitle(f"{len(runs)} run(s) compared")
    return _save(figure, Path(out))


def _accuracy_figure(run: Run) -> Figure:
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    accuracy, loss = figure.subplots(1, 2)
    # Global numbers in black, so that the sites can take the colour cycle.
    accuracy.plot(run.rounds, run.series("accuracy"), "o-", color="black", label="global test set")
    loss.plot(run.rounds, run.series("loss"), "o-", color="black", label="global test set")
    loss.plot(
        run.rounds,
        run.series("train_loss"),
        "--",
        color="dimgray",
        label="sites' training (mean)",
    )
    sites = sorted(
        {name.split("_")[0] for name in run.columns if name.endswith("_accuracy")},
        key=lambda site: int(site.removeprefix("site")),
    )
    for site in sites:
        style = {"linestyle": ":", "linewidth": 1, "alpha": 0.8, "label": f"{site} local"}
        accuracy.plot(run.rounds, run.series(f"{site}_accuracy"), **style)
        loss.plot(run.rounds, run.series(f"{site}_loss"), **style)
    _label(accuracy, "accuracy", "accuracy")
    _label(loss, "loss", "cross-entropy loss")
    for axes in (accuracy, loss):
        axes.legend(fontsize="small", ncol=2 if sites else 1)
        _integer_rounds(axes, run.rounds)
    figure.suptitle(run.name)
    return figure


def _times_figure(run: Run) -> Figure:
    figure = Figure(figsize=(10, 4.4), layout="constrained")
    axes = figure.subplots()
    bottom = [0.0] * len(run.rounds)
    for phase, values in run.phase_seconds().items():
        axes.bar(
            run.rounds, values, bottom=bottom, color=PHASE_COLORS[phase], label=PHASE_LABELS[phase]
        )
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes.set_xlabel("round")
    axes.set_ylabel("seconds")
    axes.set_title(f"{run.name}: time per round by phase")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    axes.grid(axis="y", alpha=0.3)
    _integer_rounds(axes, run.rounds)
    return figure


#: Above this many sites the partition plot draws classes as filled steps without site labels.
LABELLED_SITES = 64


def _partition_figure(name: str, rows: list[dict[str, str]]) -> Figure:
    splits = [split for split in ("train", "test") if any(row["split"] == split for row in rows)]
    classes = [column for column in rows[0] if column.startswith("class_")]
    figure = Figure(figsize=(6 + 3 * len(splits), 4.4), layout="constrained")
    axes_list = figure.subplots(1, len(splits), squeeze=False)[0]
    palette = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for axes, split in zip(axes_list, splits, strict=True):
        chosen = [row for row in rows if row["split"] == split]
        sites = [int(row["site"]) for row in chosen]
        left = [0.0] * len(chosen)
        many = len(chosen) > LABELLED_SITES
        for index, column in enumerate(classes):
            counts = [float(row[column]) for row in chosen]
            right = [a + b for a, b in zip(left, counts, strict=True)]
            color, label = palette(index % palette.N), column.removeprefix("class_")
            if many:  # one artist per class, not one bar per site and class
                axes.fill_betweenx(sites, left, right, step="mid", color=color, label=label)
            else:
                axes.barh(sites, counts, left=left, color=color, label=label)
            left = right
        if many:
            axes.set_ylabel("site")
        else:
            axes.set_yticks(sites, [f"site {site}" for site in sites])
        axes.invert_yaxis()
        axes.set_xlabel("samples")
        axes.set_title(f"{split} samples per class")
        axes.grid(axis="x", alpha=0.3)
    axes_list[-1].legend(
        title="class", fontsize="small", loc="center left", bbox_to_anchor=(1, 0.5)
    )
    figure.suptitle(name)
    return figure


def _label(axes: Axes, title: str, ylabel: str) -> None:
    axes.set_title(title)
    axes.set_xlabel("round")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)


def _integer_rounds(axes: Axes, rounds: list[int]) -> None:
    step = max(1, len(rounds) // 20)
    axes.set_xticks(rounds[::step])


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)  # attaches the Agg canvas: PNG without any display
    figure.savefig(path, dpi=DPI)
    return path


def _number(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _zero_if_nan(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def main(argv: list[str] | None = None) -> int:
    """``python -m proxyflox.plot``; returns the exit code (2 for a bad run directory)."""
    parser = argparse.ArgumentParser(
        prog="python -m proxyflox.plot",
        description="Plot one run (its plots go into its directory) or compare several.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories")
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="write one comparison figure of the given runs to FILE (default with several "
        "runs: comparison.png in the current directory)",
    )
    args = parser.parse_args(argv)
    try:
        if args.out is None and len(args.run_dirs) == 1:
            written = plot_run(args.run_dirs[0])
        else:
            written = [plot_comparison(args.run_dirs, args.out or "comparison.png")]
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
