"""Update codecs side by side: bytes per update, accuracy per round, encode + decode time.

    python -m benchmarks.compression [--seeds 0 1 2] [--extra-rounds 3] [--reps 5] [--lab-rounds 6]

Three parts, all measured in this one run:

1. **Learning.** Each codec (``none``, ``fp16``, ``int8``, ``topk`` at 1%, and ``topk`` at 1%
   with zstd after it; every lossy codec with error feedback, the default) trains the default
   digits experiment (``experiments/digits_fedavg.yaml``: 4 iid sites, 10 rounds) and
   ``experiments/digits_dirichlet.yaml`` (8 sites, Dirichlet 0.1, 20 rounds) on
   ``parsl_configs/local.py``, once per seed, runs interleaved codec by codec. Bytes per update
   are what the sites put into the store (``sent_bytes`` in ``rounds.csv``) over the arrays'
   own bytes. Where a codec ends lower than ``none``, it trains on for ``--extra-rounds`` times
   the rounds to find the round where it first reaches ``none``'s final accuracy.
2. **Codec speed.** Encode (the site's serializer) and decode (the aggregator's deserializer) of
   one update of a torchvision ResNet-18 (44.7 MB of float32): a change of the size one round
   of SGD makes, median of ``--reps`` repetitions after a warm-up.

3. **In the network lab's T2** (4 Pis, each on its own 25 Mbit link; Redis, the controller and
   the aggregator on the host side): the default experiment once per codec, ``--lab-rounds``
   rounds; bytes each Pi's link carried up per round (its interface counters) and the time the
   Pis took to put their update (the upload, timed on the Pi), rounds 2 on. Needs root
   (namespaces), like the lab's tests.

Writes ``docs/bench_compression.csv`` (one row per experiment, codec and seed),
``docs/bench_compression_rounds.csv`` (accuracy and cumulative bytes per round),
``docs/bench_compression_speed.csv``, ``docs/bench_compression_t2.csv`` and
``docs/bench_compression.png`` (accuracy against the megabytes the sites sent).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import DOCS, ROOT, median, model_weights, print_machine, write_csv
from proxyflox.errors import ConfigError, RunStoppedError

EXPERIMENTS = {
    "digits": ROOT / "experiments" / "digits_fedavg.yaml",
    "digits_dirichlet": ROOT / "experiments" / "digits_dirichlet.yaml",
}


@dataclass(frozen=True)
class Case:
    """A codec as the settings name it."""

    label: str
    settings: dict[str, str]


CASES = [
    Case("none", {}),
    Case("fp16", {"compression.codec": "fp16"}),
    Case("int8", {"compression.codec": "int8"}),
    Case("topk 1%", {"compression.codec": "topk", "compression.ratio": "0.01"}),
    Case(
        "topk 1% + zstd",
        {"compression.codec": "topk", "compression.ratio": "0.01", "compression.lossless": "zstd"},
    ),
]


def run_experiment(
    experiment: Path, case: Case, seed: int, rounds: int | None, workdir: Path
) -> list[dict[str, str]]:
    """One run on local.py (threads); its ``rounds.csv`` rows."""
    from proxyflox.controller import run_federation
    from proxyflox.results import create_run_dir
    from proxyflox.settings import load_experiment
    from proxyflox.sites import load_deployment

    overrides: dict[str, Any] = {
        **case.settings,
        "seed": str(seed),
        "runs_dir": str(workdir / "runs"),
        "site_state_dir": str(workdir / "state"),
    }
    if rounds is not None:
        overrides["rounds"] = str(rounds)
    config = load_experiment(experiment, overrides)
    run_dir = create_run_dir(config.runs_dir, config.name)
    run_federation(config, load_deployment("local.py"), run_dir, progress=lambda line: None)
    with open(run_dir / "rounds.csv", newline="") as file:
        return list(csv.DictReader(file))


def learning(
    seeds: Sequence[int], extra_rounds: int, workdir: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Part 1: every experiment, codec and seed; summary rows and per-round rows."""
    summary: list[dict[str, Any]] = []
    per_round: list[dict[str, Any]] = []
    for name, experiment in EXPERIMENTS.items():
        baseline: dict[int, float] = {}
        for seed in seeds:
            for case in CASES:  # interleaved: the machine's load falls on every codec alike
                try:
                    rows = run_experiment(experiment, case, seed, None, workdir)
                except (ConfigError, RunStoppedError) as err:  # e.g. a partition with an empty site
                    print(f"{name:17s} seed {seed}: skipped: {err}", flush=True)
                    summary.append({"experiment": name, "codec": case.label, "seed": seed,
                                    "skipped": str(err)})  # fmt: skip
                    break
                sent = [int(row["sent_bytes"]) for row in rows]
                raw = [int(row["raw_bytes"]) for row in rows]
                updates = sum(int(row["sites"]) for row in rows)
                final = float(rows[-1]["accuracy"])
                if case.label == "none":
                    baseline[seed] = final
                record: dict[str, Any] = {
                    "experiment": name,
                    "codec": case.label,
                    "seed": seed,
                    "rounds": len(rows),
                    "bytes_per_update": sum(sent) / updates,
                    "raw_bytes_per_update": sum(raw) / updates,
                    "reduction": sum(raw) / sum(sent),
                    "final_accuracy": final,
                    "accuracy_vs_none": final - baseline[seed],
                    "encode_seconds_max_median": median(
                        [float(row["encode_seconds_max"]) for row in rows]
                    ),
                    "decode_seconds_median": median([float(row["decode_seconds"]) for row in rows]),
                    "rounds_to_reach_none": len(rows) if final >= baseline[seed] else "",
                }
                if final < baseline[seed] and extra_rounds > 1:
                    longer = run_experiment(
                        experiment, case, seed, extra_rounds * len(rows), workdir
                    )
                    reached = [
                        int(row["round"])
                        for row in longer
                        if float(row["accuracy"]) >= baseline[seed]
                    ]
                    record["rounds_to_reach_none"] = (
                        reached[0] if reached else f">{extra_rounds * len(rows)}"
                    )
                summary.append(record)
                total = 0
                for row in rows:
                    total += int(row["sent_bytes"])
                    per_round.append(
                        {
                            "experiment": name,
                            "codec": case.label,
                            "seed": seed,
                            "round": int(row["round"]),
                            "accuracy": float(row["accuracy"]),
                            "sent_bytes_cumulative": total,
                        }
                    )
                print(
                    f"{name:17s} {case.label:15s} seed {seed}: {record['reduction']:7.1f}x fewer "
                    f"bytes, final accuracy {final:.4f} ({record['accuracy_vs_none']:+.4f} vs "
                    f"none), reaches none's at round {record['rounds_to_reach_none'] or '-'}",
                    flush=True,
                )
    return summary, per_round


def a_change(weights: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """A change of one SGD round's size: 1% of each tensor's spread, as float32 noise."""
    rng = np.random.default_rng(seed)
    return {
        name: (rng.standard_normal(array.shape, dtype=np.float32) * 0.01 * float(array.std()))
        if np.issubdtype(array.dtype, np.floating)
        else np.zeros_like(array)
        for name, array in weights.items()
    }


def codec_speed(reps: int) -> list[dict[str, Any]]:
    """Part 2: encode and decode seconds of a ResNet-18 update, per codec."""
    from proxyflox.codecs import CodecSpec, UpdateEncoder, decode_weights
    from proxyflox.weights import weights_nbytes

    change = a_change(model_weights("resnet18"))
    raw = weights_nbytes(change)
    rows: list[dict[str, Any]] = []
    for case in CASES:
        spec = CodecSpec(
            codec=case.settings.get("compression.codec", "none"),
            ratio=float(case.settings.get("compression.ratio", 0.01)),
            lossless=case.settings.get("compression.lossless", "none"),
        )
        encode, decode = [], []
        encoded = bytearray()
        for rep in range(reps + 1):
            start = time.perf_counter()
            encoded = UpdateEncoder(spec)(change)
            middle = time.perf_counter()
            decode_weights(encoded)
            end = time.perf_counter()
            if rep:  # the first is a warm-up
                encode.append(middle - start)
                decode.append(end - middle)
        row = {
            "codec": case.label,
            "model": "resnet18",
            "raw_bytes": raw,
            "encoded_bytes": len(encoded),
            "reduction": raw / len(encoded),
            "encode_seconds": median(encode),
            "decode_seconds": median(decode),
            "encode_plus_decode_seconds": median(encode) + median(decode),
        }
        rows.append(row)
        print(
            f"{case.label:15s} 44.7 MB update: {row['reduction']:6.1f}x, encode "
            f"{row['encode_seconds']:.3f} s + decode {row['decode_seconds']:.3f} s",
            flush=True,
        )
    return rows


#: Part 3's codecs (the lossless stage changes nothing on a link that zstd would not also see).
LAB_CASES = [case for case in CASES if "zstd" not in case.label]


def in_t2(rounds: int, workdir: Path) -> list[dict[str, Any]]:
    """Part 3: the default experiment in the lab's T2 (4 Pis, each on its own 25 Mbit link,
    Redis on the host side), once per codec: what each Pi's link carried up per round, and how
    long the Pis took to put their update (the upload across the link, timed on the Pi)."""
    from tests.infra.netlab import NetLab

    rows: list[dict[str, Any]] = []
    topology = ROOT / "benchmarks" / "topologies" / "t2.yaml"
    with NetLab(topology, workdir / "lab") as lab:
        host, port = lab.start_redis()
        for case in LAB_CASES:
            run_root = workdir / f"t2-{case.label.replace(' ', '').replace('%', '')}"
            run_root.mkdir()
            args = ["--runs_dir", str(run_root / "runs"), "--rounds", str(rounds), "--sites", "4",
                    "--store.backend", "redis", "--store.host", host, "--store.port", str(port),
                    "--site_state_dir", str(run_root / "state")]  # fmt: skip
            for key, value in case.settings.items():
                args += [f"--{key}", value]
            done, traffic = lab.run_fedavg(args, run_root)
            if done.returncode != 0:
                raise SystemExit(f"T2 {case.label}: {done.stderr.strip()[-500:]}")
            (run_dir,) = (run_root / "runs").iterdir()
            with open(run_dir / "rounds.csv", newline="") as file:
                measured = list(csv.DictReader(file))[1:]  # round 1 warms the workers up
            up = [traffic[f"wifi-{i}"].a_to_b / rounds for i in range(4)]
            rows.append(
                {
                    "codec": case.label,
                    "rounds": rounds,
                    "sent_bytes_per_update": median(
                        [int(r["sent_bytes"]) / int(r["sites"]) for r in measured]
                    ),
                    "wifi_up_bytes_per_round": median(up),
                    "wifi_down_bytes_per_round": median(
                        [traffic[f"wifi-{i}"].b_to_a / rounds for i in range(4)]
                    ),
                    "put_seconds_max": median([float(r["put_seconds_max"]) for r in measured]),
                    "round_seconds": median([float(r["round_seconds"]) for r in measured]),
                }
            )
    none = rows[0]
    for row in rows:
        row["bytes_ratio"] = none["wifi_up_bytes_per_round"] / row["wifi_up_bytes_per_round"]
        row["put_time_ratio"] = none["put_seconds_max"] / row["put_seconds_max"]
        print(
            f"T2 {row['codec']:15s}: {row['wifi_up_bytes_per_round'] / 1e3:7.1f} kB up per "
            f"Pi link and round ({row['bytes_ratio']:5.1f}x fewer), update put "
            f"{row['put_seconds_max']:.3f} s ({row['put_time_ratio']:5.1f}x faster), round "
            f"{row['round_seconds']:.2f} s",
            flush=True,
        )
    return rows


def plot(per_round: list[dict[str, Any]], path: Path) -> None:
    """Accuracy against the megabytes the sites sent, one panel per experiment (seed 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    experiments = list(dict.fromkeys(row["experiment"] for row in per_round))
    figure, axes = plt.subplots(1, len(experiments), figsize=(6 * len(experiments), 4))
    for axis, experiment in zip(np.atleast_1d(axes), experiments, strict=True):
        seed = min(row["seed"] for row in per_round)
        for case in CASES:
            rows = [
                r
                for r in per_round
                if r["experiment"] == experiment and r["codec"] == case.label and r["seed"] == seed
            ]
            axis.plot(
                [r["sent_bytes_cumulative"] / 1e6 for r in rows],
                [r["accuracy"] for r in rows],
                marker="o",
                markersize=3,
                label=case.label,
            )
        axis.set_xscale("log")
        axis.set_xlabel("MB the sites sent (cumulative, log scale)")
        axis.set_ylabel("global test accuracy")
        axis.set_title(f"{experiment} (seed {seed})")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> None:
    """Run both parts and write the CSV files and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--extra-rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--lab-rounds", type=int, default=6, help="rounds per run in T2 (0: skip)")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    print_machine()
    speed = codec_speed(args.reps)
    with tempfile.TemporaryDirectory(prefix="bench-compression-") as workdir:
        lab = in_t2(args.lab_rounds, Path(workdir)) if args.lab_rounds else []
        summary, per_round = learning(args.seeds, args.extra_rounds, Path(workdir))
    write_csv(args.out / "bench_compression.csv", summary)
    write_csv(args.out / "bench_compression_rounds.csv", per_round)
    write_csv(args.out / "bench_compression_speed.csv", speed)
    if lab:
        write_csv(args.out / "bench_compression_t2.csv", lab)
    plot(per_round, args.out / "bench_compression.png")
    print(f"wrote {args.out}/bench_compression*.csv and bench_compression.png")


if __name__ == "__main__":
    main()
