"""The live status of the running round: on a terminal (a real pseudo-terminal here) the command
line rewrites one status line in place; piped, it prints exactly one line per round."""

from __future__ import annotations

import os
import re
import select
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from proxyflox.controller.status import ERASE_TO_END
from tests.helpers import bare_env, cli_command, run_cli
from tests.infra.common import stop_process

ROUNDS = 4
SITES = 4
STATUS = re.compile(
    r"round +(?P<round>\d+)/(?P<rounds>\d+)  sites (?P<done>\d+)/(?P<sampled>\d+)"
    r"  elapsed (?P<elapsed>\d+\.\d\d)s  ETA (?:--|(?P<eta>\d+\.\d\d)s \(run (?P<run>\d+\.\d)s\))$"
)
#: ProgressLines' line of a synchronous round.
ROUND_LINE = re.compile(
    r"round +(?P<round>\d+)/\d+  accuracy (?P<accuracy>\d\.\d{4})  loss (?P<loss>\d+\.\d{4})"
    r"  round (?P<seconds>\d+\.\d\d)s  \(train max \d+\.\d\ds, aggregate \d+\.\d\ds,"
    r" evaluate \d+\.\d\ds\)$"
)
ARGS = ("--config", "local.py", "--rounds", str(ROUNDS))


def run_in_terminal(*args: str, cwd: Path, timeout: float = 300) -> tuple[int, str]:
    """Run the command line with a pseudo-terminal as stdin, stdout and stderr; exit code and
    everything it wrote to the terminal."""
    controller, terminal = os.openpty()
    process = subprocess.Popen(
        cli_command(*args),
        cwd=cwd,
        env=bare_env(),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)  # the child holds it: reading ends with EIO once the child is gone
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                pytest.fail(f"the run did not end in {timeout:.0f}s", pytrace=False)
            ready, _, _ = select.select([controller], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        return process.wait(timeout=60), b"".join(chunks).decode()
    finally:
        if process.poll() is None:
            stop_process(process, timeout=30)
        os.close(controller)


def test_terminal_shows_a_live_status_that_each_round_line_replaces(tmp_path: Path) -> None:
    code, output = run_in_terminal(*ARGS, "--runs_dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert code == 0, output
    # The terminal turns each newline into \r\n; within a line, \r starts an overwrite.
    statuses: dict[int, list[re.Match[str]]] = {}
    round_seconds: dict[int, float] = {}
    shown_lines = []
    for line in output.split("\r\n"):
        # Within a line, each \r starts an overwrite: only the last piece stays visible.
        *overwritten, visible = line.split("\r")
        for text in overwritten:
            if text in ("", ERASE_TO_END):  # nothing drawn yet, or the status cleared
                continue
            # Each status is one write: the text, then erasing what a longer one left.
            match = STATUS.match(text.removesuffix(ERASE_TO_END))
            assert match, repr(text)
            assert text.endswith(ERASE_TO_END), repr(text)
            statuses.setdefault(int(match["round"]), []).append(match)
        shown = visible.removeprefix(ERASE_TO_END)
        assert not STATUS.match(shown.removesuffix(ERASE_TO_END)), f"status left: {line!r}"
        if match := ROUND_LINE.match(shown):
            number = int(match["round"])
            round_seconds[number] = float(match["seconds"])
            # The round's status came first. Its line comes once its evaluation is in, while
            # the next round's status shows, which is erased right before the line.
            assert number in statuses, repr(line)
            assert visible.startswith(ERASE_TO_END) or number == ROUNDS, repr(line)
        if shown:
            shown_lines.append(shown)
    # What stays on the screen is what piped output has: one line per round.
    assert shown_lines[0].startswith("run directory: ")
    assert [ROUND_LINE.match(line) is not None for line in shown_lines[1:-1]] == [True] * ROUNDS
    assert shown_lines[-1].startswith(f"done: {ROUNDS} rounds in ")
    assert sorted(statuses) == sorted(round_seconds) == list(range(1, ROUNDS + 1))
    for number, drawn in statuses.items():
        done = [int(status["done"]) for status in drawn]
        assert done == sorted(done), done
        assert (done[0], done[-1]) == (0, SITES), done
        assert {(int(s["rounds"]), int(s["sampled"])) for s in drawn} == {(ROUNDS, SITES)}
        elapsed = [float(status["elapsed"]) for status in drawn]
        assert elapsed == sorted(elapsed)
        # A redraw may land between the round's end being measured and the status ending: on
        # busy cores, a moment later.
        assert elapsed[-1] <= round_seconds[number] + 0.25, (elapsed, round_seconds[number])
        if number == 1:  # no round has finished yet: nothing to predict from
            assert all(status["eta"] is None for status in drawn)
            continue
        # The median of the earlier rounds' times as printed (all of them: fewer than 5 here).
        typical = statistics.median(round_seconds[r] for r in range(1, number))
        for status in drawn:
            eta, run = float(status["eta"]), float(status["run"])
            # What the median says is left of this round, and of the run (printed rounded).
            assert eta == pytest.approx(max(typical - float(status["elapsed"]), 0), abs=0.02)
            assert run == pytest.approx(eta + (ROUNDS - number) * typical, abs=0.07)


def test_piped_output_is_one_line_per_round(tmp_path: Path) -> None:
    result = run_cli(*ARGS, "--runs_dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout
    assert "\x1b" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].startswith("run directory: ")
    assert [ROUND_LINE.match(line) is not None for line in lines[1:-1]] == [True] * ROUNDS
    assert lines[-1].startswith(f"done: {ROUNDS} rounds in ")
