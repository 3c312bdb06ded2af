"""Bad input through the real command line: one line naming the key, the value and what is
allowed, exit code 2, no traceback, and no run directory left behind."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import CLI

Files = Callable[[str, str], str]


def load_cli() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fedavg_cli", CLI)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLI_MODULE = load_cli()


@pytest.fixture
def write(tmp_path: Path) -> Files:
    """Write a file into the test's directory; returns its path."""

    def write_file(name: str, text: str) -> str:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)

    return write_file


def broken_run(tmp_path: Path, write: Files) -> str:
    """A run directory whose checkpoint is garbage."""
    run_dir = tmp_path / "broken-run"
    write("broken-run/config.yaml", "rounds: 4\nparsl_config: local.py\n")
    write("broken-run/checkpoints/latest", "round-0002\n")
    write("broken-run/checkpoints/round-0002/weights.npz", "not a zip file")
    write("broken-run/checkpoints/round-0002/state.npz", "not a zip file")
    return str(run_dir)


def latin1(tmp_path: Path, name: str) -> str:
    """A settings file in Latin-1, not UTF-8 (``name: café``)."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("rounds: 3\nname: caf\u00e9\n".encode("latin-1"))
    return str(path)


def symlink_loop(tmp_path: Path) -> str:
    (tmp_path / "loop-a").symlink_to(tmp_path / "loop-b")
    (tmp_path / "loop-b").symlink_to(tmp_path / "loop-a")
    return str(tmp_path / "loop-a")


# (arguments, or a function of (tmp_path, write) giving them) -> expected part of the message
CASES: list[tuple[str, Callable[[Path, Files], list[str]], str]] = [
    ("malformed YAML", lambda t, w: ["--experiment", w("x.yaml", "rounds: [3\n")],
     "is not valid YAML at line"),
    ("YAML not a mapping", lambda t, w: ["--experiment", w("x.yaml", "- 1\n")],
     "must hold a mapping of keys, got list"),
    ("unknown key in YAML", lambda t, w: ["--experiment", w("x.yaml", "roundz: 3\n")],
     "unknown key 'roundz' (did you mean 'rounds'?)"),
    ("unknown nested key",
     lambda t, w: ["--experiment", w("x.yaml", "store:\n  directry: /x\n")],
     "unknown key 'store.directry' (did you mean 'store.directory'?)"),
    ("wrong type", lambda t, w: ["--rounds", "ten"], "rounds: must be an integer, got 'ten'"),
    ("rounds zero", lambda t, w: ["--rounds", "0"], "rounds: must be at least 1, got 0"),
    ("rounds negative", lambda t, w: ["--rounds", "-2"], "rounds: must be at least 1, got -2"),
    ("fraction too big", lambda t, w: ["--fraction", "1.5"], "fraction: must be in (0, 1]"),
    ("fraction zero", lambda t, w: ["--fraction", "0"], "fraction: must be in (0, 1]"),
    ("alpha zero", lambda t, w: ["--partition", "dirichlet", "--alpha", "0"],
     "alpha: must be greater than 0, got 0.0"),
    ("unknown dataset", lambda t, w: ["--dataset", "mnsit"],
     "dataset: unknown value 'mnsit' (did you mean 'mnist'?)"),
    ("unknown model", lambda t, w: ["--model", "resnet9000"], "model: unknown value 'resnet9000'"),
    ("unknown strategy", lambda t, w: ["--strategy.name", "fedavgg"],
     "strategy.name: unknown value 'fedavgg' (did you mean 'fedavg'?)"),
    ("unknown store", lambda t, w: ["--store.backend", "redsi"],
     "store.backend: unknown value 'redsi' (did you mean 'redis'?)"),
    ("unknown partition", lambda t, w: ["--partition", "non-iid"],
     "partition: unknown value 'non-iid'"),
    ("missing Parsl config", lambda t, w: ["--config", "lokal.py"],
     "config: Parsl config 'lokal.py' not found"),
    ("config module without config", lambda t, w: ["--config", w("c.py", "x = 1\n")],
     "must define `config`, a parsl.config.Config (found NoneType)"),
    ("config module that fails", lambda t, w: ["--config", w("c.py", "import nonexistent_mod\n")],
     "importing"),
    ("site options for a missing executor",
     lambda t, w: ["--site_options.site-9.batch_size", "2"],
     "site_options.site-9: no executor labelled 'site-9'"),
    ("missing data_dir", lambda t, w: ["--dataset", "mnist"], "data_dir"),
    ("more sites than samples", lambda t, w: ["--sites", "5000"],
     "sites: 5000 sites but digits has only 1437 training samples"),
    ("batch size zero", lambda t, w: ["--batch_size", "0"], "batch_size: must be at least 1"),
    ("negative learning rate", lambda t, w: ["--lr", "-0.1"], "lr: must be greater than 0"),
    ("momentum one", lambda t, w: ["--momentum", "1"], "momentum: must be in [0, 1)"),
    ("test fraction zero", lambda t, w: ["--test_fraction", "0"], "test_fraction: must be between"),
    ("unknown device", lambda t, w: ["--site_options.site-0.device", "gpu"],
     "site_options.site-0.device: unknown value 'gpu'"),
    ("count and fraction", lambda t, w: ["--fraction", "0.5", "--clients_per_round", "2"],
     "clients_per_round and fraction: set at most one of the two"),
    ("min_clients above sites", lambda t, w: ["--min_clients", "9"],
     "min_clients: 9 is more than the 4 sites"),
    ("async without budget", lambda t, w: ["--strategy.name", "fedbuff"],
     "max_updates or max_seconds: fedbuff is asynchronous and needs a budget"),
    ("krum with too few sites",
     lambda t, w: ["--strategy.name", "krum", "--strategy.byzantine", "1"],
     "sites: rounds of 4 sites: krum with byzantine=1 needs more than 2f+2 = 4 updates"),
    ("median over the memory limit",
     lambda t, w: ["--strategy.name", "fedmedian", "--strategy.max_memory_mb", "1"],
     "strategy.max_memory_mb: fedmedian holds all 4 updates of a round at once"),
    ("misspelled option", lambda t, w: ["--rouns", "3"],
     "unknown option '--rouns' (did you mean '--rounds'?)"),
    ("unreachable redis", lambda t, w: ["--store.backend", "redis", "--store.port", "1"],
     "redis at 127.0.0.1:1 is unreachable"),
    ("endpoint store without file", lambda t, w: ["--store.backend", "endpoint"],
     "store.endpoints_file: required with store.backend endpoint"),
    ("bad port", lambda t, w: ["--store.port", "70000"], "store.port: must be a TCP port"),
    ("missing resume directory", lambda t, w: ["--resume", str(t / "no-such-run")],
     "is not a directory"),
    ("resume directory that is no run", lambda t, w: ["--resume", str(t)],
     "has no config.yaml; is it a run directory?"),
    ("resume without checkpoint",
     lambda t, w: ["--resume", str(Path(w("r/config.yaml", "parsl_config: local.py\n")).parent)],
     "has no complete checkpoint"),
    ("corrupt resume directory", lambda t, w: ["--resume", broken_run(t, w)],
     "cannot be read"),
    ("resume with new settings", lambda t, w: ["--resume", str(t), "--rounds", "3"],
     "--resume continues a run with the settings in its config.yaml; drop --rounds"),
    ("device with a bad GPU number",
     lambda t, w: ["--site_options.site-0.device", "cuda:abc"],
     "site_options.site-0.device: must be cpu, mps, cuda or cuda:N (N a GPU number)"),
    ("negative seed", lambda t, w: ["--seed", "-1"], "seed: must be between 0 and 4294967295"),
    ("seed past 2**32", lambda t, w: ["--seed", str(2**32)],
     "seed: must be between 0 and 4294967295, got 4294967296"),
    ("nan learning rate", lambda t, w: ["--lr", "nan"], "lr: must be a finite number, got nan"),
    ("infinite alpha", lambda t, w: ["--alpha", "inf"], "alpha: must be a finite number"),
    ("nan deadline", lambda t, w: ["--round_deadline", "nan"],
     "round_deadline: must be a finite number"),
    ("nan server lr", lambda t, w: ["--strategy.server_lr", "nan"],
     "strategy.server_lr: must be a finite number"),
    ("infinite proximal mu", lambda t, w: ["--strategy.proximal_mu", "inf"],
     "strategy.proximal_mu: must be a finite number"),
    ("more classes per site than the dataset has",
     lambda t, w: ["--partition", "shards", "--classes_per_site", "12"],
     "classes_per_site: must be between 1 and the dataset's 10 classes, got 12"),
    ("abbreviated option", lambda t, w: ["--min", "5"],
     "unknown option '--min' (did you mean '--min_clients'?)"),
    ("a section as an option", lambda t, w: ["--store", "redis"],
     "unknown option '--store' (did you mean one of '--store.backend',"),
    ("an ambiguous abbreviation", lambda t, w: ["--round", "5"],
     "unknown option '--round' (did you mean one of '--rounds', '--round_deadline'?)"),
    ("experiment file not UTF-8", lambda t, w: ["--experiment", latin1(t, "x.yaml")],
     "x.yaml is not UTF-8 text (byte 0xe9 at offset 19)"),
    ("resume config.yaml not UTF-8",
     lambda t, w: ["--resume", str(Path(latin1(t, "r/config.yaml")).parent)],
     "config.yaml is not UTF-8 text"),
    ("runs_dir under /proc", lambda t, w: ["--runs_dir", "/proc/proxyflox-runs"],
     "runs_dir: cannot create a run directory in /proc/proxyflox-runs"),
    ("runs_dir a regular file", lambda t, w: ["--runs_dir", w("a-file", "")],
     "a-file: it is not a directory"),
    ("runs_dir a symlink loop", lambda t, w: ["--runs_dir", symlink_loop(t)],
     "loop-a: it is not a directory"),
    ("NUL byte in name", lambda t, w: ["--experiment", w("x.yaml", 'name: "a\\0b"\n')],
     "name: must be a non-empty name of printable characters without '/', got 'a\\x00b'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_gets_one_clear_line_and_exit_2(
    tmp_path: Path,
    write: Files,
    capsys: pytest.CaptureFixture[str],
    args: Callable[[Path, Files], list[str]],
    message: str,
) -> None:
    runs = tmp_path / "runs"
    argv = args(tmp_path, write)
    if "--resume" not in argv and "--runs_dir" not in argv:  # a resumed run keeps its own
        argv += ["--runs_dir", str(runs)]
    code = CLI_MODULE.main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert "Traceback" not in captured.err
    assert not runs.exists()


def test_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = CLI_MODULE.main(["--rounds", "0", "--debug", "--runs_dir", str(tmp_path / "runs")])
    assert code == 2
    assert "Traceback" in capsys.readouterr().err


def test_there_are_at_least_25_bad_input_cases() -> None:
    assert len(CASES) >= 25


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
name: *e
"""


def test_a_yaml_alias_bomb_gives_a_short_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bomb.yaml").write_text(BILLION_LAUGHS)
    code = CLI_MODULE.main(
        ["--experiment", str(tmp_path / "bomb.yaml"), "--runs_dir", str(tmp_path / "runs")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert len(err) < 400  # the value is shown cut short, not expanded (9^5 strings)
    assert not (tmp_path / "runs").exists()


def test_a_key_given_twice_in_the_experiment_file_is_named_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "twice.yaml").write_text("rounds: 3\nlr: 0.1\nrounds: 5\n")
    code = CLI_MODULE.main(
        ["--experiment", str(tmp_path / "twice.yaml"), "--runs_dir", str(tmp_path / "runs")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "duplicate key 'rounds' at line 3" in err
    assert not (tmp_path / "runs").exists()
