"""Store backends on real servers: same weights as the file store, nothing left behind, fail
fast when unreachable, and no secret anywhere."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch
import yaml
from proxystore.connectors.endpoint import EndpointConnector, EndpointKey
from proxystore.proxy import get_factory
from proxystore.store.base import Store
from proxystore.store.utils import get_key

from proxyflox.endpoints import MANIFEST, EndpointOptions
from proxyflox.errors import ConfigError
from proxyflox.stores import StoreRoute
from proxyflox.stores.endpoint import (
    EndpointBackend,
    HostSharedEndpointConnector,
    keep_on_uuid,
    read_endpoints_file,
    use_proxystore_home,
)
from proxyflox.stores.multi import routes_for
from proxyflox.stores.redis import REDIS_PASSWORD_ENV
from proxyflox.stores.settings import StoreSettings
from tests.helpers import CLI, bare_env, only_run_dir, put_routes, run_cli
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


def endpoint_objects_left(endpoints_file: Path, keys: list[EndpointKey]) -> list[EndpointKey]:
    """The keys whose objects an endpoint of the file still holds (asked from the controller's)."""
    endpoints = read_endpoints_file(endpoints_file)
    use_proxystore_home(endpoints.controller_home)
    connector = EndpointConnector(endpoints.uuids)
    try:
        return [key for key in keys if connector.exists(key)]
    finally:
        connector.close()


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
    assert {key.endpoint_id for key in parsed} == set(read_endpoints_file(endpoints_file).uuids)
    assert endpoint_objects_left(endpoints_file, parsed) == []


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


# ----------------------------------------------------------------------------------------------
# The multi store: a route per executor


def multi_settings(**connectors: dict[str, Any]) -> StoreSettings:
    return StoreSettings.model_validate(
        {"backend": "multi", "connectors": connectors, "put": "lan"}
    )


def test_routes_put_where_each_executor_says_and_open_only_what_it_reads() -> None:
    settings = multi_settings(
        lan={"backend": "redis"}, shared={"backend": "file"}, wan={"backend": "file"}
    )
    routes = routes_for(
        settings, ["site-0", "site-1", "site-2"], "aggregator",
        put={"site-1": "shared", "site-2": "wan"}, read={"site-2": ["wan", "lan"]},
    )  # fmt: skip
    assert routes == {
        "site-0": StoreRoute("lan", ("lan",)),
        "site-1": StoreRoute("shared", ("lan", "shared")),
        "site-2": StoreRoute("wan", ("lan", "wan")),
        "aggregator": StoreRoute("lan", ("lan", "shared", "wan")),
    }


@pytest.mark.parametrize(
    ("put", "read", "message"),
    [
        ({"site-1": "wan"}, {"site-1": ["wan"]},
         "site_options.site-1.store_read: site-1 cannot read connector 'lan', where aggregator "
         "puts the global model (site-1 reads wan)"),
        ({"site-1": "wan"}, {"aggregator": ["lan"]},
         "site_options.aggregator.store_read: aggregator cannot read connector 'wan', where "
         "site-1 puts its updates (aggregator reads lan)"),
        ({"site-0": "nowhere"}, {},
         "site_options.site-0.store_put: no connector named 'nowhere' in store.connectors "
         "(lan, wan)"),
    ],
)  # fmt: skip
def test_a_route_whose_objects_a_reader_cannot_reach_is_refused(
    put: dict[str, str], read: dict[str, list[str]], message: str
) -> None:
    settings = multi_settings(lan={"backend": "redis"}, wan={"backend": "file"})
    with pytest.raises(ConfigError) as raised:
        routes_for(settings, ["site-0", "site-1"], "aggregator", put=put, read=read)
    assert str(raised.value) == message


def test_an_impossible_route_stops_the_run_before_any_training(tmp_path: Path) -> None:
    done = run_cli(
        "--store.backend", "multi", "--store.put", "lan",
        "--store.connectors.lan.backend", "file",
        "--store.connectors.wan.backend", "file",
        "--store.connectors.wan.directory", str(tmp_path / "wan"),
        "--site_options.site-2.store_put", "wan", "--site_options.site-2.store_read", "wan",
        "--runs_dir", str(tmp_path / "runs"), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith(
        "error: site_options.site-2.store_read: site-2 cannot read connector 'lan'"
    ), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "wan").exists()


@pytest.mark.slow
def test_multi_store_gives_the_file_stores_weights_puts_by_route_and_leaves_nothing(
    tmp_path: Path, file_run: Path, endpoints_file: Path
) -> None:
    shared = tmp_path / "shared"
    with redis_server() as port:
        run_dir = run_two_rounds(
            tmp_path, "runs", "--store.backend", "multi", "--store.put", "lan",
            "--store.connectors.lan.backend", "redis", "--store.connectors.lan.port", str(port),
            "--store.connectors.shared.backend", "file",
            "--store.connectors.shared.directory", str(shared),
            "--store.connectors.wan.backend", "endpoint",
            "--store.connectors.wan.endpoints_file", str(endpoints_file),
            "--store.connectors.wan.keep_on", "aggregator",
            "--site_options.site-1.store_put", "shared",
            "--site_options.site-2.store_put", "wan", "--site_options.site-3.store_put", "wan",
            "--site_options.site-3.store_read", "wan,lan",
        )  # fmt: skip
        assert redis_keys(port) == []
    assert same_weights(run_dir, file_run)
    assert put_routes(run_dir) == {
        "aggregator": {"lan"}, "site-0": {"lan"}, "site-1": {"shared"},
        "site-2": {"wan"}, "site-3": {"wan"},
    }  # fmt: skip
    assert list(shared.iterdir()) == []
    endpoint_keys = [
        EndpointKey(*re.findall(r"EndpointKey\(object_id='([^']*)', endpoint_id='([^']*)'", key)[0])
        for key in put_keys(run_dir)
        if "EndpointKey" in key
    ]
    assert len(endpoint_keys) == 2 * 2  # two sites, two rounds
    # keep_on: the sites' updates went to the aggregator's endpoint as they were put.
    aggregator = read_endpoints_file(endpoints_file).endpoints["aggregator"].uuid
    assert {key.endpoint_id for key in endpoint_keys} == {aggregator}
    assert endpoint_objects_left(endpoints_file, endpoint_keys) == []


def test_keep_on_puts_into_the_named_endpoint_from_any_other(endpoints_file: Path) -> None:
    endpoints = read_endpoints_file(endpoints_file)
    aggregator = endpoints.endpoints["aggregator"]
    settings = StoreSettings(
        backend="endpoint", endpoints_file=str(endpoints_file), keep_on="aggregator"
    )
    EndpointBackend().check(settings)
    site = HostSharedEndpointConnector(
        endpoints.uuids, proxystore_dir=endpoints.endpoints["site-0"].home,
        keep_on=keep_on_uuid(endpoints, settings),
    )  # fmt: skip
    kept = HostSharedEndpointConnector(endpoints.uuids, proxystore_dir=aggregator.home)
    try:
        assert site.endpoint_uuid != kept.endpoint_uuid
        key = site.put(b"an update")
        assert key.endpoint_id == aggregator.uuid
        # Held by the aggregator's endpoint itself: its own processes read it locally.
        assert kept.get(key) == b"an update"
        site.evict(key)
        assert not kept.exists(key)
        # Rebuilt from its config (as inside every proxy), it still puts there.
        rebuilt = HostSharedEndpointConnector.from_config(site.config())
        assert isinstance(rebuilt, HostSharedEndpointConnector)
        assert rebuilt.keep_on == aggregator.uuid
        rebuilt.close()
    finally:
        site.close()
        kept.close()


def test_keep_on_naming_no_endpoint_is_one_line_before_any_connection(tmp_path: Path) -> None:
    eps = tmp_path / "endpoints.yaml"
    uuid = "4da791b4-1f63-4bb0-9ed3-2d1e2c7e3a10"
    eps.write_text(f"relay: ws://127.0.0.1:1\nendpoints:\n  site-0: {{uuid: {uuid}}}\n")
    settings = StoreSettings(backend="endpoint", endpoints_file=str(eps), keep_on="aggregatr")
    with pytest.raises(ConfigError, match=r"^store.keep_on: 'aggregatr' has no endpoint in .*"
                       r"endpoints.yaml \(site-0\)$"):  # fmt: skip
        EndpointBackend().check(settings)


def test_an_object_over_proxystore_s_default_limit_goes_through_an_endpoint(
    tmp_path: Path,
) -> None:
    size = 120 * 10**6  # ProxyStore's default max_object_size is 100 MB
    options = EndpointOptions(max_object_size_mb=128)
    with local_endpoints(tmp_path / "eps", ["site-0"], options) as path:
        endpoints = read_endpoints_file(path)
        settings = StoreSettings(
            backend="endpoint", endpoints_file=str(path), max_object_size_mb=128
        )
        EndpointBackend().check(settings)  # the endpoints are configured for it
        with pytest.raises(ConfigError, match="holds objects up to 128 MiB"):
            EndpointBackend().check(settings.model_copy(update={"max_object_size_mb": 200}))
        connector = EndpointConnector(endpoints.uuids, proxystore_dir=endpoints.controller_home)
        with Store("big", connector, cache_size=0, register=False) as store:
            data = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
            proxy = store.proxy(data, populate_target=False)
            key = get_key(proxy)
            assert np.array_equal(get_factory(proxy)(), data)
            store.evict(key)
            assert not store.exists(key)
