"""Store backends on real servers: same weights as the file store, nothing left behind, fail
fast when unreachable, and no secret anywhere."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from proxystore.connectors.endpoint import EndpointConnector, EndpointKey

from proxyflox.endpoints import MANIFEST
from proxyflox.stores.endpoint import read_endpoints_file, use_proxystore_home
from proxyflox.stores.redis import REDIS_PASSWORD_ENV, PasswordRedisConnector
from tests.helpers import CLI, bare_env, only_run_dir, run_cli
from tests.infra.netlab import NetLab
from tests.infra.netns import in_namespace
from tests.servers import local_endpoints, redis_keys, redis_server

HTEX_LABELS = ["site-0", "site-1", "site-2", "site-3", "aggregator"]


def run_two_rounds(tmp_path: Path, name: str, *store_args: str) -> Path:
    """A 2-round run on local_htex.py with the given store settings; returns its run dir."""
    runs = tmp_path / name
    done = run_cli(
        "--config", "local_htex.py", "--rounds", "2", "--runs_dir", str(runs),
        "--store.access_log", "true", *store_args, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "round   2/2  accuracy" in done.stdout
    return only_run_dir(runs)


def put_keys(run_dir: Path) -> list[str]:
    lines = (run_dir / "store-access.log").read_text().splitlines()
    return [key for _, op, key in (line.split("\t") for line in lines) if op == "put"]


def same_weights(a: Path, b: Path) -> bool:
    first, second = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.fixture(scope="module")
def file_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same run with the default file store."""
    tmp_path = tmp_path_factory.mktemp("file")
    store_dir = tmp_path / "store"
    run_dir = run_two_rounds(tmp_path, "runs", "--store.directory", str(store_dir))
    assert list(store_dir.iterdir()) == []  # no leak
    assert (store_dir.stat().st_mode & 0o777) == 0o700
    return run_dir


@pytest.fixture(scope="module")
def endpoints_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with local_endpoints(tmp_path_factory.mktemp("endpoints"), HTEX_LABELS) as path:
        yield path


@pytest.mark.slow
def test_redis_store_gives_the_file_stores_weights_and_leaves_no_key(
    tmp_path: Path, file_run: Path
) -> None:
    with redis_server() as port:
        run_dir = run_two_rounds(
            tmp_path, "runs", "--store.backend", "redis", "--store.port", str(port)
        )
        assert len(put_keys(run_dir)) == 1 + 2 * 5
        assert redis_keys(port) == []
    assert same_weights(run_dir, file_run)


@pytest.mark.slow
def test_endpoint_store_gives_the_file_stores_weights_and_leaves_no_object(
    tmp_path: Path, file_run: Path, endpoints_file: Path
) -> None:
    run_dir = run_two_rounds(
        tmp_path, "runs", "--store.backend", "endpoint", "--store.endpoints_file",
        str(endpoints_file),
    )  # fmt: skip
    assert same_weights(run_dir, file_run)
    keys = put_keys(run_dir)
    assert len(keys) == 1 + 2 * 5
    # Objects live on the endpoint of the process that put them: four sites and the aggregator.
    parsed = [EndpointKey(*re.findall(r"'([^']*)'", key)) for key in keys]
    endpoints = read_endpoints_file(endpoints_file)
    assert {key.endpoint_id for key in parsed} == set(endpoints.uuids)
    use_proxystore_home(endpoints.controller_home)
    connector = EndpointConnector(endpoints.uuids)
    try:
        assert not any(connector.exists(key) for key in parsed)
    finally:
        connector.close()


def test_local_relay_and_endpoints_listen_on_loopback_only(endpoints_file: Path) -> None:
    listening = [
        (process.info["name"], conn.laddr.ip)
        for process in psutil.process_iter(["name", "cmdline"])
        if str(endpoints_file.parent) in " ".join(process.info["cmdline"] or [])
        or process.info["name"] in ("proxystore-rela", "proxystore-endp")
        for conn in process.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN
    ]
    assert len(listening) >= len(HTEX_LABELS) + 1
    assert {ip for _, ip in listening} == {"127.0.0.1"}


def test_endpoints_down_stops_everything_up_started(tmp_path: Path) -> None:
    directory = tmp_path / "eps"
    command = [sys.executable, "-m", "proxyflox.endpoints"]
    started = subprocess.run(
        [*command, "up", "--sites", "1", "--dir", str(directory)],
        capture_output=True, text=True, env=bare_env(), timeout=120,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert f"--store.endpoints_file {directory / 'endpoints.yaml'}" in started.stdout
    homes = [str(directory / label) for label in ("site-0", "aggregator")]
    assert all(Path(home, Path(home).name, "daemon.pid").exists() for home in homes)
    stopped = subprocess.run(
        [*command, "down", "--dir", str(directory)],
        capture_output=True, text=True, env=bare_env(), timeout=120,
    )  # fmt: skip
    assert stopped.returncode == 0, stopped.stderr
    assert not directory.exists()
    leftovers = [
        p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
        if str(directory) in " ".join(p.info["cmdline"] or [])
    ]  # fmt: skip
    assert leftovers == []


@pytest.mark.parametrize(
    ("store_args", "message"),
    [
        (["--store.backend", "redis", "--store.port", "1"],
         "error: redis at 127.0.0.1:1 is unreachable"),
        (["--store.backend", "endpoint"],
         "error: store.endpoints_file: required with store.backend endpoint"),
        (["--store.backend", "endpoint", "--store.endpoints_file", "nowhere.yaml"],
         "error: store.endpoints_file nowhere.yaml does not exist"),
        (["--store.directory", "/nonexistent/dir/store"],
         "error: file store in /nonexistent/dir/store: /nonexistent/dir does not exist"),
    ],
)  # fmt: skip
def test_an_unusable_store_stops_the_run_before_any_training(
    tmp_path: Path, store_args: list[str], message: str
) -> None:
    done = run_cli(*store_args, "--runs_dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(message), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_a_relay_that_is_down_stops_the_run_before_any_training(tmp_path: Path) -> None:
    directory = tmp_path / "eps"
    with local_endpoints(directory, ["site-0", "aggregator"]) as path:
        relay = read_endpoints_file(path).relay
        relay_pid = yaml.safe_load((directory / MANIFEST).read_text())["relay"]["pid"]
        psutil.Process(relay_pid).terminate()
        psutil.Process(relay_pid).wait(10)
        done = run_cli(
            "--store.backend", "endpoint", "--store.endpoints_file", str(path),
            "--runs_dir", str(tmp_path / "runs"), cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: endpoint store: relay {relay} is unreachable")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_the_redis_password_is_used_but_never_shown_or_written(tmp_path: Path) -> None:
    password = "pw-6f1c2a9e-never-shown"
    env = bare_env() | {REDIS_PASSWORD_ENV: password}
    with redis_server(password=password) as port:
        args = [sys.executable, str(CLI), "--config", "local_htex.py", "--rounds", "1",
                "--store.backend", "redis", "--store.port", str(port)]  # fmt: skip
        good = subprocess.run(
            [*args, "--runs_dir", str(tmp_path / "runs")], env=env, cwd=tmp_path,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert good.returncode == 0, good.stderr
        assert redis_keys(port, password) == []
        wrong = subprocess.run(
            [*args, "--runs_dir", str(tmp_path / "wrong")],
            env=env | {REDIS_PASSWORD_ENV: "not-it"}, cwd=tmp_path,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        missing = subprocess.run(
            [*args, "--runs_dir", str(tmp_path / "missing")], env=bare_env(), cwd=tmp_path,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert wrong.returncode == 2
    # Not "unreachable": the server answered, and the line says what is wrong and where.
    assert (
        f"error: redis at 127.0.0.1:{port} refused to authenticate: {REDIS_PASSWORD_ENV} holds "
        "a wrong one"
    ) in wrong.stderr
    assert "not-it" not in wrong.stderr
    assert missing.returncode == 2
    assert f"{REDIS_PASSWORD_ENV} is not set" in missing.stderr
    for output in (good.stdout, good.stderr, wrong.stdout, wrong.stderr):
        assert password not in output
    written = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert any(p.name == "rounds.csv" for p in written)
    assert [p for p in written if password.encode() in p.read_bytes()] == []


@pytest.mark.slow
def test_a_redis_put_that_takes_longer_than_five_seconds_completes(tmp_path: Path) -> None:
    # A 45 MB update takes 14 s over 25 Mbit WiFi; redis-py's default timeout (5 s for a
    # whole send, every retry too) failed such puts. Here: 20 MB over a 25 Mbit link, 6.4 s.
    topology = {
        "name": "slow-put",
        "switches": ["lan"],
        "hosts": {"pi": {"role": "controller"}, "store": {"role": "store"},
                  "aggregator": {"role": "aggregator"}, "site": {"role": "site"}},
        "links": {"pi": {"ends": ["pi", "lan"], "rate": "25mbit"},
                  "store": {"ends": ["store", "lan"]},
                  "aggregator": {"ends": ["aggregator", "lan"]},
                  "site": {"ends": ["site", "lan"]}},
    }  # fmt: skip
    path = tmp_path / "slow-put.yaml"
    path.write_text(yaml.safe_dump(topology))
    value = bytes(range(256)) * (20 * 2**20 // 256)
    with NetLab(path, tmp_path / "lab") as lab:
        host, port = lab.start_redis()

        def put_and_get() -> bytes:
            # Rebuilt from its config, as in every process that resolves a proxy.
            connector = PasswordRedisConnector.from_config(
                PasswordRedisConnector(host, port).config()
            )
            start = time.perf_counter()
            key = connector.put(value)
            assert time.perf_counter() - start > 5
            got: bytes = connector.get(key)  # type: ignore[assignment]
            connector.evict(key)
            return got

        assert in_namespace(lab.hosts["pi"].namespace, put_and_get) == value


def test_a_shared_store_directory_keeps_its_mode_and_others_files(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    (shared / "someone-elses.bin").write_bytes(b"\0" * 10)
    done = run_cli(
        "--rounds", "1", "--store.directory", str(shared), "--runs_dir", str(tmp_path / "runs"),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (shared.stat().st_mode & 0o7777) == 0o1777
    assert [p.name for p in shared.iterdir()] == ["someone-elses.bin"]
    assert "left in" not in done.stderr  # nobody else's files are counted as the run's


@pytest.mark.parametrize(
    "args",
    [
        ["--store.password=pw-secret-42"],
        ["--store.password", "pw-secret-42"],
        ["--store.host", ":pw-secret-42@127.0.0.1"],
        ["--store.host", "redis://user:pw-secret-42@db.example"],
    ],
)
def test_a_password_typed_where_it_does_not_belong_is_never_echoed(
    tmp_path: Path, args: list[str]
) -> None:
    done = run_cli(*args, "--runs_dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 2
    assert "pw-secret-42" not in done.stdout + done.stderr
    assert "PROXYFLOX_REDIS_PASSWORD" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
