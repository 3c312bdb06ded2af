"""A live status line while a round runs, for a terminal.

While a round runs, one line is rewritten in place (a carriage return, no newline)::

    round   3/10  sites 2/4  elapsed 0.12s  ETA 0.10s (run 1.8s)

It shows the sites whose train app returned out of the sites sampled, the round's elapsed time
and, once a round has finished, an ETA from the median of the last rounds. A round's status
ends when its aggregate returns; its progress line follows once its evaluation is in, while the
next round runs. The line is cleared before any other line is printed. It is meant
for a terminal only: piped output keeps exactly one line per round.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import threading
import time
from collections import deque
from collections.abc import Sequence
from types import TracebackType
from typing import TextIO

from proxyflox.controller.observer import RunObserver
from proxyflox.messages import AggregateResult

#: The last rounds whose median predicts the next round's time.
RECENT_ROUNDS = 5
#: Seconds between redraws while nothing happens (the elapsed time still moves).
REDRAW_SECONDS = 0.25
#: Erases from the cursor to the end of the line (ANSI): each redraw overwrites the last one
#: in one write, without blanking the line first (no flicker).
ERASE_TO_END = "\x1b[K"


class LiveStatus(RunObserver):
    """The live status of the running round on ``stream``, and the printer of normal lines.

    Use it as a context manager: it redraws from a thread of its own until closed, and leaves
    the terminal's line empty on every way out.

    Args:
        stream: The terminal.
        rounds: Rounds of the run (for ``round 3/10``).
    """

    def __init__(self, stream: TextIO, rounds: int) -> None:
        self.stream = stream
        self.rounds = rounds
        self._recent: deque[float] = deque(maxlen=RECENT_ROUNDS)
        self._round: int | None = None  # the running round, None between rounds
        self._started = 0.0
        self._sampled = 0
        self._returned = 0
        self._shown = False  # whether the terminal's current line holds the status
        # Guards the state above and every write: the redraw thread and the controller's
        # thread share the terminal.
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._redraw_until_closed, daemon=True)

    def __enter__(self) -> LiveStatus:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._closed.set()
        self._thread.join()
        with self._lock:
            self._round = None
            self._clear()

    def print_line(self, line: str) -> None:
        """Print a normal line, in place of the status (which the next redraw brings back)."""
        with self._lock:
            self._clear()
            self.stream.write(line + "\n")
            self.stream.flush()

    # -- the run's events -----------------------------------------------------------------------

    def round_started(self, round_number: int, sites: Sequence[int]) -> None:
        """Start the round's status: no site returned yet."""
        with self._lock:
            self._round, self._started = round_number, time.perf_counter()
            self._sampled, self._returned = len(sites), 0
            self._draw()

    def site_returned(self, round_number: int, site: int) -> None:
        """Count the site as done."""
        with self._lock:
            self._returned += 1
            self._draw()

    def aggregated(self, round_number: int, result: AggregateResult) -> None:
        """End the round's status: its time (``round_seconds``) ends here.

        Its time joins the recent rounds. The round's evaluation runs on, so its progress line
        comes while the next round's status is shown, and replaces that until the next redraw.
        """
        with self._lock:
            if self._round == round_number:
                self._recent.append(time.perf_counter() - self._started)
                self._round = None
                self._clear()

    # -- drawing (callers hold the lock) -----------------------------------------------------

    def status(self, now: float) -> str:
        """The status text of the running round at ``now`` (``time.perf_counter()``)."""
        elapsed = now - self._started
        text = (
            f"round {self._round:>3}/{self.rounds}  sites {self._returned}/{self._sampled}"
            f"  elapsed {elapsed:.2f}s"
        )
        if not self._recent:
            return text + "  ETA --"
        typical = statistics.median(self._recent)
        left = max(typical - elapsed, 0.0)
        later = self.rounds - (self._round or 0)
        return text + f"  ETA {left:.2f}s (run {left + later * typical:.1f}s)"

    def _draw(self) -> None:
        if self._round is None:
            return
        # Longer than the terminal, the line would wrap and \r could no longer rewrite it.
        width = shutil.get_terminal_size().columns - 1
        self.stream.write("\r" + self.status(time.perf_counter())[:width] + ERASE_TO_END)
        self.stream.flush()
        self._shown = True

    def _clear(self) -> None:
        if self._shown:
            self.stream.write("\r" + ERASE_TO_END)
            self.stream.flush()
            self._shown = False

    def _redraw_until_closed(self) -> None:
        while not self._closed.wait(REDRAW_SECONDS):
            # A terminal that went away (SIGHUP stops the run anyway) has nobody to show to.
            with self._lock, contextlib.suppress(OSError):
                self._draw()
