"""With endpoints, a site host's workers share one fetch of each global model: the copies in
the host's ProxyStore home, their lock and pruning, and a real run that counts what the
aggregator's endpoint sends."""

from __future__ import annotations

import csv
import multiprocessing
import re
import stat
import time
from collections import Counter
from pathlib import Path

import pytest
from proxystore.connectors.endpoint import EndpointKey

from proxyflox.endpoints import EndpointOptions
from proxyflox.stores.endpoint import read_endpoints_file
from proxyflox.stores.host_copies import (
    COPIES_DIR,
    HostCopies,
    copies_directory,
    remove_copies,
)
from tests.helpers import only_run_dir, run_cli
from tests.servers import local_endpoints
from tests.test_stores import endpoint_objects_left, put_keys, same_weights

MODEL = b"\x00\x01" * 50_000


def _fetch_in_a_worker(directory: str, fetches_log: str, start: float) -> bytes | None:
    """One worker process: wait for the common start, then read the object through the copies."""
    time.sleep(max(0.0, start - time.time()))

    def fetch() -> bytes:
        with open(fetches_log, "a") as log:
            log.write("fetch\n")
        time.sleep(0.5)  # a slow link: the other workers arrive while this one fetches
        return MODEL

    return HostCopies(Path(directory)).fetch_once("ep.model", fetch, is_alive=lambda _: True)


def test_workers_of_a_host_fetch_an_object_once_and_read_the_same_bytes(tmp_path: Path) -> None:
    directory = copies_directory(tmp_path / "home", "run")
    fetches = tmp_path / "fetches.log"
    start = time.time() + 1.0
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.starmap(
            _fetch_in_a_worker, [(str(directory), str(fetches), start)] * 3, chunksize=1
        )
    assert results == [MODEL] * 3
    assert fetches.read_text().splitlines() == ["fetch"]
    assert HostCopies(directory).names() == ["ep.model"]
    for made in (directory, directory.parent):  # nobody else on the host reads them
        assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert [p.name for p in directory.iterdir() if p.name.startswith(".writing-")] == []


def test_a_new_copy_prunes_those_whose_objects_left_the_store(tmp_path: Path) -> None:
    copies = HostCopies(copies_directory(tmp_path, "run"))
    for name in ("ep.round-1", "ep.round-2"):
        copies.fetch_once(name, lambda: MODEL, is_alive=lambda _: True)
    alive = {"ep.round-2"}  # round 1's model was evicted; round 2's is still evaluated
    assert copies.fetch_once("ep.round-3", lambda: MODEL, is_alive=alive.__contains__) == MODEL
    assert copies.names() == ["ep.round-2", "ep.round-3"]
    # An object that is not in the store leaves no copy behind.
    assert copies.fetch_once("ep.gone", lambda: None, is_alive=lambda _: True) is None
    assert copies.names() == ["ep.round-2", "ep.round-3"]


def test_the_runs_end_removes_its_copies_and_leaves_other_runs_copies(tmp_path: Path) -> None:
    for run in ("this", "other"):
        copies = HostCopies(copies_directory(tmp_path, run))
        copies.fetch_once("ep.m", lambda: MODEL, is_alive=lambda _: True)
    assert remove_copies(tmp_path, ["this"]) == 1
    assert HostCopies(copies_directory(tmp_path, "other")).names() == ["ep.m"]
    assert remove_copies(tmp_path, ["other"]) == 1
    assert not (tmp_path / COPIES_DIR).exists()


def test_a_home_that_cannot_hold_copies_reads_without_them(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("a file where the ProxyStore home's directory would be")
    copies = HostCopies(copies_directory(home, "run"))
    assert copies.fetch_once("ep.m", lambda: MODEL, lambda _: True) == MODEL
    assert copies.names() == []


WORKERS = 3
SITE_AND_AGGREGATOR = f"""
from parsl.config import Config
from proxyflox.executors import local_executor

config = Config(executors=[local_executor("site-0", workers={WORKERS}),
                           local_executor("aggregator")])
"""
THREADS = """
from parsl.config import Config
from parsl.executors import ThreadPoolExecutor

config = Config(executors=[ThreadPoolExecutor(label="site-0", max_threads=3),
                           ThreadPoolExecutor(label="aggregator", max_threads=1)])
"""
#: What a DEBUG endpoint logs for each get it answers for a peer: the object's id and the peer.
ANSWERED_GET = re.compile(r"sending get response with id=\S+ and key=(\S+) to (\S+)")


def two_rounds(tmp_path: Path, name: str, config: str, *store_args: str) -> Path:
    module = tmp_path / f"{name}.py"
    module.write_text(config)
    runs = tmp_path / name
    done = run_cli(
        "--config", str(module), "--rounds", "2", "--sites", str(WORKERS),
        "--runs_dir", str(runs), "--store.access_log", "true", *store_args, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return only_run_dir(runs)


@pytest.mark.slow
def test_each_global_model_crosses_to_a_site_host_once_whatever_its_workers(
    tmp_path: Path,
) -> None:
    reference = two_rounds(
        tmp_path, "file", THREADS, "--store.directory", str(tmp_path / "file-store")
    )
    with local_endpoints(
        tmp_path / "eps", ["site-0", "aggregator"], EndpointOptions(log_level="DEBUG")
    ) as path:
        run_dir = two_rounds(
            tmp_path, "endpoint", SITE_AND_AGGREGATOR,
            "--store.backend", "endpoint", "--store.endpoints_file", str(path),
        )  # fmt: skip
        endpoints = read_endpoints_file(path)
        site, aggregator = endpoints.endpoints["site-0"], endpoints.endpoints["aggregator"]
        assert site.home
        assert aggregator.home
        log = (Path(aggregator.home) / "aggregator" / "log.txt").read_text()
        sent_to_site = Counter(key for key, peer in ANSWERED_GET.findall(log) if peer == site.uuid)
        keys = [EndpointKey(*re.findall(r"'([^']*)'", key)) for key in put_keys(run_dir)]
        left = endpoint_objects_left(path, keys)
    with open(run_dir / "sites.csv", newline="") as file:
        readers = {row["pid"] for row in csv.DictReader(file)}
    # Several worker processes read each round's model (3 sites, 3 workers, 2 rounds) ...
    assert len(readers) >= 2, readers
    # ... and the aggregator's endpoint sent each model the sites trained from once: the
    # initial one and round 1's.
    assert sorted(sent_to_site.values()) == [1, 1], sent_to_site
    assert same_weights(run_dir, reference)
    assert left == []
    assert not (Path(site.home) / COPIES_DIR).exists()
