"""The clients benchmark's workload in Flower's simulation engine.

Runs in Flower's own venv (made by :mod:`benchmarks.clients`), from the project root, with the
root on ``PYTHONPATH``: it imports only the project's torch-and-numpy parts (data, partition,
model, training loop, seeds), so every client computes exactly the share of the partition, the
initial model and the batch order that the ProxyFlox site of the same number computes.

    python -m benchmarks.flower_digits --clients 1000 --rounds 4 --out result.json

Writes one JSON record: per round, the wall time (from one centralised evaluation to the next,
so a round is training, aggregation and the global evaluation, as ProxyFlox's round is) and the
CPU seconds of this process (Flower's server side), plus the last accuracy.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from proxyflox.data import TEST, TRAIN, ArrayDataset, dataset_info, load_split
from proxyflox.data.partition import partition
from proxyflox.models import build_model
from proxyflox.seeds import INIT_STREAM, PARTITION_STREAM, SHUFFLE_STREAM, derive_seed
from proxyflox.training import evaluate, train_local

DATASET = "digits"


@functools.lru_cache(maxsize=1)
def _plan(seed: int, num_sites: int) -> list[np.ndarray]:
    """The iid partition every ProxyFlox site draws (one per client process)."""
    labels = load_split(DATASET, None, TRAIN, seed, 0.2, False).y
    return partition(labels, num_sites, "iid", seed=derive_seed(seed, PARTITION_STREAM))


def site_train_data(seed: int, num_sites: int, site: int) -> ArrayDataset:
    """One client's training samples, as ProxyFlox's ``site_data`` computes them."""
    return load_split(DATASET, None, TRAIN, seed, 0.2, False).subset(_plan(seed, num_sites)[site])


def new_model(seed: int) -> torch.nn.Module:
    """The digits CNN with ProxyFlox's seeded initial weights."""
    info = dataset_info(DATASET, None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, INIT_STREAM))
        return build_model("cnn", info.input_shape, info.num_classes)


client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    """Local training of one sampled client, settings from the round's config."""
    config = msg.content["config"]
    seed, num_sites = int(config["seed"]), int(config["num-sites"])
    site = int(context.node_config["partition-id"])
    torch.set_num_threads(1)
    model = new_model(seed)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    data = site_train_data(seed, num_sites, site)
    loss = train_local(
        model,
        data,
        epochs=int(config["epochs"]),
        batch_size=int(config["batch-size"]),
        lr=float(config["lr"]),
        momentum=float(config["momentum"]),
        shuffle_seed=derive_seed(seed, SHUFFLE_STREAM, int(config["server-round"]), site),
    )
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(data)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


def main() -> int:
    """Run the simulation; write the per-round figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--cpus", type=int, default=2, help="cores Ray may use (1 per client)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    process = psutil.Process()
    marks: list[tuple[float, float]] = []  # (wall, CPU) at each centralised evaluation's end
    accuracy: list[float] = []
    test = load_split(DATASET, None, TEST, args.seed, 0.2, False)

    def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = new_model(args.seed)
        model.load_state_dict(arrays.to_torch_state_dict())
        acc, loss = evaluate(model, test)
        accuracy.append(acc)
        times = process.cpu_times()
        marks.append((time.perf_counter(), times.user + times.system))
        return MetricRecord({"accuracy": acc, "loss": loss})

    server = ServerApp()

    @server.main()
    def run(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,  # only the centralised evaluation, as ProxyFlox does
            min_train_nodes=args.clients,
            min_available_nodes=args.clients,
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(new_model(args.seed).state_dict()),
            num_rounds=args.rounds,
            train_config=ConfigRecord(
                {
                    "seed": args.seed,
                    "num-sites": args.clients,
                    "epochs": args.epochs,
                    "batch-size": args.batch_size,
                    "lr": args.lr,
                    "momentum": args.momentum,
                }
            ),
            evaluate_fn=global_evaluate,
        )

    # Ray's workers unpickle the client app by module name: run as ``-m`` this module is
    # ``__main__`` there, so hand over the copy imported under its own name.
    from benchmarks import flower_digits

    start = time.perf_counter()
    run_simulation(
        server_app=server,
        client_app=flower_digits.client,
        num_supernodes=args.clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": args.cpus, "num_gpus": 0},
        },
    )
    record = {
        "process_seconds": time.perf_counter() - start,
        "start_to_round0_seconds": marks[0][0] - start if marks else float("nan"),
        "round_seconds": [b[0] - a[0] for a, b in itertools.pairwise(marks)],
        "controller_cpu_seconds": [b[1] - a[1] for a, b in itertools.pairwise(marks)],
        "accuracy": accuracy[-1] if accuracy else float("nan"),
    }
    args.out.write_text(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
