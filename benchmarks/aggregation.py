"""Peak memory and speed of the aggregate app for 10 and 100 updates of a ~45 MB model.

    python -m benchmarks.aggregation [--model resnet18] [--updates 10 100] [--reps 3]

(from the project root: its measurements run in fresh processes started as
``python -m benchmarks.aggregation --child ...``).

The updates (the model's weights, shifted by a different constant each) are put into a file
store, as sites would. Each measurement then runs the project's ``aggregate_updates`` app body
(FedAvg: read one update at a time into ``weighted_mean``, then put the new global model) on an
``AggregateTask`` holding the updates' store keys, in a fresh Python process, like a Parsl
worker that has imported the project:

- peak memory: the process's peak resident set size (``VmHWM``, reset through
  ``/proc/self/clear_refs`` just before the app) minus its resident size at that moment, and, in
  a separate run, the peak of ``tracemalloc`` (numpy reports its array memory to it);
- time per update: the app's own ``aggregate_seconds`` (averaging, without fetching) and
  ``resolve_seconds`` (fetching) divided by the number of updates, against a plain numpy add of
  the same arrays (``np.add(total, update, out=total)`` over every array of the model), timed in
  another fresh process: the memory-bandwidth bound of summing the bytes once.

Runs are interleaved over the update counts and repeated; the figures are medians. A last
fresh process shows where the peak and the time per update come from: the tracemalloc peak of
resolving one update and of putting the new global model, and the time of each step of averaging
one update (scale in place, add, free) on arrays fresh from a resolve.

Then the other paths, 10 updates each, peak RSS as above: FedAvg of changes (sites that send
their change, as every site with a codec does: the global model plus the mean of the changes),
without a codec (changes read as views of their bytes) and with ``fp16``, ``int8`` and ``topk``
(decoded into fresh arrays from their smaller bytes).
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from proxystore.store.base import Store

from benchmarks.common import (
    DOCS,
    ROOT,
    SWEEP_MODELS,
    median,
    model_weights,
    print_machine,
    project_root_on_pythonpath,
    write_csv,
)
from proxyflox.messages import AggregateTask, UpdateRef
from proxyflox.settings import load_experiment
from proxyflox.stores import (
    evict_weights,
    key_of,
    open_app_store,
    open_store,
    put_weights,
    resolve_weights,
)
from proxyflox.strategies import build_strategy
from proxyflox.weights import Weights, layout_of, weights_nbytes

PEAK_TARGET = 2.2  # peak memory at most this many model sizes
#: The other aggregation paths measured (10 updates each): FedAvg of changes (the global model
#: plus their mean) without a codec and with each lossy codec, which decode into fresh arrays.
PATH_CODECS = ("none", "fp16", "int8", "topk")
PATH_UPDATES = 10
FLAT_TOLERANCE = 0.10  # "flat": peak with the most updates within 10% of the fewest


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def load_task(updates_file: Path) -> tuple[AggregateTask, Store[Any]]:
    """The aggregate task over every prepared update (FedAvg, their keys in the file store),
    and that store as the aggregate app opens it."""
    with open(updates_file, "rb") as file:
        task: AggregateTask = pickle.load(file)
    store = open_app_store(task.store_config)
    assert store is not None, "the updates are in a file store"
    return task, store


def child_aggregate(updates_file: Path, count: int, trace: bool) -> dict[str, Any]:
    """In a fresh process: run the aggregate app body on the first ``count`` updates."""
    from proxyflox.apps import aggregate_updates

    task, store = load_task(updates_file)
    task = replace(task, updates=task.updates[:count])
    gc.collect()
    if trace:
        tracemalloc.start()
    baseline_kib = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (the peak) to the current RSS
    start = time.perf_counter()
    result = aggregate_updates(task)
    app_seconds = time.perf_counter() - start
    peak_kib = _status_kib("VmHWM")
    traced_peak = tracemalloc.get_traced_memory()[1] if trace else 0
    if trace:
        tracemalloc.stop()
    evict_weights(store, result.model.weights)
    return {
        "updates": count,
        "model_bytes": result.model_bytes,
        "baseline_rss_bytes": baseline_kib * 1024,
        "peak_rss_above_baseline_bytes": (peak_kib - baseline_kib) * 1024,
        "tracemalloc_peak_bytes": traced_peak,
        "app_seconds": app_seconds,
        "aggregate_seconds": result.aggregate_seconds,
        "resolve_seconds": result.resolve_seconds,
        "put_seconds": result.put_seconds,
    }


def child_phases(updates_file: Path) -> dict[str, Any]:
    """In a fresh process: where the peak comes from, and where an update's averaging time goes.

    Memory (tracemalloc, above what was allocated just before): reading one update, and
    putting the new global model. Time, per update, on arrays fresh from a read (as
    ``weighted_mean`` sees them): scaling in place, adding into the total, freeing the update.
    """
    from proxyflox.codecs import encode_weights

    task, store = load_task(updates_file)
    keys = [update.update for update in task.updates]
    total, _ = resolve_weights(keys[0], store)
    total = {n: a.astype(np.float64) if a.dtype.kind in "iu" else a for n, a in total.items()}
    tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    update, _ = resolve_weights(keys[1], store)
    resolve_peak = tracemalloc.get_traced_memory()[1] - before
    del update
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    ref, _ = put_weights(total, store)
    put_peak = tracemalloc.get_traced_memory()[1] - before
    serialized = len(encode_weights(total))
    tracemalloc.stop()
    evict_weights(store, ref)
    scale, add, free = [], [], []
    for key in keys[2:12]:
        update, _ = resolve_weights(key, store)
        update = {n: a.astype(np.float64) if a.dtype.kind in "iu" else a for n, a in update.items()}
        start = time.perf_counter()
        for array in update.values():
            np.multiply(array, array.dtype.type(0.01), out=array)
        scale.append(time.perf_counter() - start)
        start = time.perf_counter()
        for name, array in update.items():
            total[name] += array
        add.append(time.perf_counter() - start)
        start = time.perf_counter()
        del update, array
        free.append(time.perf_counter() - start)
    model_bytes = weights_nbytes(total)
    return {
        "resolve_peak_model_sizes": resolve_peak / model_bytes,
        "put_peak_model_sizes": put_peak / model_bytes,
        "serialized_model_sizes": serialized / model_bytes,
        "fresh_scale_seconds": median(scale),
        "fresh_add_seconds": median(add),
        "free_seconds": median(free),
    }


def child_numpy_add(updates_file: Path, repeats: int) -> dict[str, Any]:
    """In a fresh process: a plain numpy add of one update into a total, array by array."""
    with open(updates_file.with_name("reference.pkl"), "rb") as file:
        arrays: Weights = pickle.load(file)
    total = {
        name: np.array(a, dtype=np.float64 if a.dtype.kind in "iu" else a.dtype)
        for name, a in arrays.items()
    }
    update = {name: total[name].copy() for name in total}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for name in total:
            np.add(total[name], update[name], out=total[name])
        times.append(time.perf_counter() - start)
    scale = []
    for _ in range(repeats):  # weighted_mean also scales each update in place first
        start = time.perf_counter()
        for name in update:
            np.multiply(update[name], 0.5, out=update[name])
        scale.append(time.perf_counter() - start)
    return {
        "numpy_add_seconds": median(times),
        "numpy_scale_seconds": median(scale),
        "bytes": weights_nbytes(total),
    }


def run_child(updates_file: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.aggregation", "--child", str(updates_file), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def prepare(model: str, count: int, tmp: Path) -> tuple[Path, int, float]:
    """Put ``count`` updates into a file store, as sites would; return the file holding the
    aggregate task over all of them, the model's bytes and the median put time."""
    config = load_experiment(None, {"store.directory": str(tmp / "store")})
    store = open_store(config.store, tmp, "bench-aggregation")
    reference = model_weights(model)
    updates, puts = [], []
    for site in range(count):
        update = {
            name: (a + np.float32(1e-3 * site)).astype(a.dtype) if a.dtype.kind == "f" else a
            for name, a in reference.items()
        }
        ref, seconds = put_weights(update, store)
        puts.append(seconds)
        updates.append(UpdateRef(key_of(ref), num_samples=100 + site, site=site))
        del update
    task = AggregateTask(
        strategy=build_strategy(config.strategy),  # FedAvg: does not read the current model
        global_weights=None,
        dataset=SWEEP_MODELS[model].info,
        state=None,
        updates=tuple(updates),
        store_config=store.config(),
        layout=layout_of(reference),
    )
    path = tmp / "updates.pkl"
    with open(path, "wb") as file:
        pickle.dump(task, file)
    with open(path.with_name("reference.pkl"), "wb") as file:
        pickle.dump(reference, file)
    store.close()
    return path, weights_nbytes(reference), median(puts)


def prepare_changes(model: str, codec: str, count: int, tmp: Path) -> Path:
    """Put a global model and ``count`` changes from it encoded with ``codec`` (as sites with
    that ``compression.codec`` would); return the file holding FedAvg's aggregate task."""
    from proxyflox.codecs import CodecSpec, UpdateEncoder

    config = load_experiment(None, {"store.directory": str(tmp / "store")})
    store = open_store(config.store, tmp, f"bench-aggregation-{codec}")
    reference = model_weights(model)
    global_ref, _ = put_weights(reference, store)
    rng = np.random.default_rng(0)
    updates = []
    for site in range(count):
        change = {
            name: rng.normal(0, 1e-3, a.shape).astype(a.dtype) if a.dtype.kind == "f" else a * 0
            for name, a in reference.items()
        }
        encoder = UpdateEncoder(CodecSpec(codec=codec)) if codec != "none" else None
        ref, _ = put_weights(change, store, encoder)
        updates.append(UpdateRef(key_of(ref), num_samples=100 + site, change=True, site=site))
        del change
    task = AggregateTask(
        strategy=build_strategy(config.strategy),
        global_weights=key_of(global_ref),
        dataset=SWEEP_MODELS[model].info,
        state=None,
        updates=tuple(updates),
        store_config=store.config(),
        layout=layout_of(reference),
    )
    path = tmp / f"changes-{codec}.pkl"
    with open(path, "wb") as file:
        pickle.dump(task, file)
    store.close()
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", choices=list(SWEEP_MODELS))
    parser.add_argument("--updates", nargs="+", type=int, default=[10, 100])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        path, what = Path(args.child[0]), args.child[1]
        if what == "numpy":
            print(json.dumps(child_numpy_add(path, 20)))
        elif what == "phases":
            print(json.dumps(child_phases(path)))
        else:
            print(json.dumps(child_aggregate(path, int(what), "trace" in args.child[2:])))
        return 0

    print_machine()
    project_root_on_pythonpath()  # for the child processes
    tmp = Path(tempfile.mkdtemp(prefix="proxyflox-bench-aggregation-"))
    rows: list[dict[str, Any]] = []
    phases: dict[str, Any] = {}
    try:
        start = time.perf_counter()
        updates_file, model_bytes, put_seconds = prepare(args.model, max(args.updates), tmp)
        print(
            f"put {max(args.updates)} updates of {args.model} ({model_bytes / 1e6:.1f} MB) "
            f"into a file store in {time.perf_counter() - start:.0f} s "
            f"(median put {put_seconds:.3f} s)",
            flush=True,
        )
        for rep in range(args.reps):
            for count in args.updates:
                row = run_child(updates_file, str(count)) | {"rep": rep, "kind": "rss"}
                rows.append(row)
                print(
                    f"rep {rep + 1} {count:>4} updates: peak +"
                    f"{row['peak_rss_above_baseline_bytes'] / 1e6:.1f} MB, averaging "
                    f"{row['aggregate_seconds']:.2f} s, fetching {row['resolve_seconds']:.2f} s",
                    flush=True,
                )
            rows.append(run_child(updates_file, "numpy") | {"rep": rep, "kind": "numpy"})
        for count in args.updates:
            rows.append(run_child(updates_file, str(count), "trace") | {"kind": "tracemalloc"})
        phases = run_child(updates_file, "phases") | {"kind": "phases"}
        rows.append(phases)
        for codec in PATH_CODECS:
            changes_file = prepare_changes(args.model, codec, PATH_UPDATES, tmp / codec)
            for rep in range(args.reps):
                row = run_child(changes_file, str(PATH_UPDATES))
                rows.append(row | {"rep": rep, "kind": f"changes-{codec}"})
            shutil.rmtree(tmp / codec, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    numpy_add = median([r["numpy_add_seconds"] for r in rows if r["kind"] == "numpy"])
    numpy_scale = median([r["numpy_scale_seconds"] for r in rows if r["kind"] == "numpy"])
    summary = []
    for count in args.updates:
        runs = [r for r in rows if r["kind"] == "rss" and r["updates"] == count]
        traced = [r for r in rows if r["kind"] == "tracemalloc" and r["updates"] == count]
        peak = median([r["peak_rss_above_baseline_bytes"] for r in runs])
        per_update = median([r["aggregate_seconds"] / count for r in runs])
        summary.append(
            {
                "model": args.model,
                "model_mb": model_bytes / 1e6,
                "updates": count,
                "runs": len(runs),
                "peak_rss_mb": peak / 1e6,
                "peak_rss_model_sizes": peak / model_bytes,
                "tracemalloc_peak_mb": median([r["tracemalloc_peak_bytes"] for r in traced]) / 1e6,
                "tracemalloc_peak_model_sizes": median(
                    [r["tracemalloc_peak_bytes"] for r in traced]
                )
                / model_bytes,
                "averaging_seconds_per_update": per_update,
                "fetch_seconds_per_update": median([r["resolve_seconds"] / count for r in runs]),
                "put_seconds": median([r["put_seconds"] for r in runs]),
                "app_seconds": median([r["app_seconds"] for r in runs]),
                "numpy_add_seconds": numpy_add,
                "numpy_scale_plus_add_seconds": numpy_add + numpy_scale,
                "averaging_vs_numpy_add": per_update / numpy_add,
                "numpy_add_gb_per_s": 3 * model_bytes / numpy_add / 1e9,
                "resolve_peak_model_sizes": phases["resolve_peak_model_sizes"],
                "put_peak_model_sizes": phases["put_peak_model_sizes"],
                "fresh_scale_seconds": phases["fresh_scale_seconds"],
                "fresh_add_seconds": phases["fresh_add_seconds"],
                "free_seconds": phases["free_seconds"],
            }
        )

    print(
        f"\n{args.model}: {model_bytes / 1e6:.1f} MB of weights; numpy add of one update "
        f"{numpy_add * 1e3:.1f} ms ({3 * model_bytes / numpy_add / 1e9:.1f} GB/s counting 2 "
        f"reads + 1 write), scale in place + add {(numpy_add + numpy_scale) * 1e3:.1f} ms"
    )
    print(
        f"{'updates':>8}{'peak RSS MB':>13}{'x model':>9}{'tracemalloc MB':>16}{'x model':>9}"
        f"{'avg ms/update':>15}{'vs add':>8}{'fetch ms/update':>17}{'put s':>7}"
    )
    for e in summary:
        print(
            f"{e['updates']:>8}{e['peak_rss_mb']:>13.1f}{e['peak_rss_model_sizes']:>9.2f}"
            f"{e['tracemalloc_peak_mb']:>16.1f}{e['tracemalloc_peak_model_sizes']:>9.2f}"
            f"{e['averaging_seconds_per_update'] * 1e3:>15.1f}"
            f"{e['averaging_vs_numpy_add']:>7.2f}x{e['fetch_seconds_per_update'] * 1e3:>17.1f}"
            f"{e['put_seconds']:>7.3f}"
        )
    print(
        f"\nwhere the peak comes from (tracemalloc, in model sizes): resolving one update "
        f"{phases['resolve_peak_model_sizes']:.2f}x (its bytes; the arrays are views of them),"
        f" putting the new global model {phases['put_peak_model_sizes']:.2f}x; on top of the "
        "running total (1x)"
    )
    print(
        f"where an update's averaging time goes (arrays fresh from a resolve): scale in place "
        f"{phases['fresh_scale_seconds'] * 1e3:.1f} ms, add into the total "
        f"{phases['fresh_add_seconds'] * 1e3:.1f} ms, free the update "
        f"{phases['free_seconds'] * 1e3:.1f} ms"
    )
    print(
        f"\nother paths, {PATH_UPDATES} updates (FedAvg of changes: the global model + their mean):"
    )
    print(f"{'codec':>8}{'peak RSS MB':>13}{'x model':>9}{'fetch ms/update':>17}")
    for codec in PATH_CODECS:
        runs = [r for r in rows if r["kind"] == f"changes-{codec}"]
        peak = median([r["peak_rss_above_baseline_bytes"] for r in runs])
        fetch = median([r["resolve_seconds"] / PATH_UPDATES for r in runs])
        summary.append(
            {
                "model": args.model,
                "model_mb": model_bytes / 1e6,
                "updates": PATH_UPDATES,
                "path": f"changes-{codec}",
                "runs": len(runs),
                "peak_rss_mb": peak / 1e6,
                "peak_rss_model_sizes": peak / model_bytes,
                "fetch_seconds_per_update": fetch,
            }
        )
        print(f"{codec:>8}{peak / 1e6:>13.1f}{peak / model_bytes:>9.2f}{fetch * 1e3:>17.1f}")
    peaks = [e["peak_rss_model_sizes"] for e in summary if "path" not in e]
    print("\ntargets:")
    print(
        f"  peak memory <= {PEAK_TARGET:.1f}x model size: max {max(peaks):.2f}x: "
        + ("met" if max(peaks) <= PEAK_TARGET else "MISSED")
    )
    weights_rows = [e for e in summary if "path" not in e]
    growth = weights_rows[-1]["peak_rss_mb"] / weights_rows[0]["peak_rss_mb"] - 1
    print(
        f"  flat in the number of updates ({weights_rows[0]['updates']} -> "
        f"{weights_rows[-1]['updates']}): "
        f"{growth:+.1%} " + ("met" if abs(growth) <= FLAT_TOLERANCE else "MISSED")
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "bench_aggregation.csv", summary)
    write_csv(args.out / "bench_aggregation_runs.csv", rows)
    print(f"\nwrote {args.out / 'bench_aggregation.csv'}, bench_aggregation_runs.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
