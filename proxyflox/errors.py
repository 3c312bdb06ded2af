"""The errors every layer may raise, and the helpers that word them; imports nothing of ours.

A :class:`ConfigError` message is one line meant for the user: it names the key, the value and
what is allowed. Leaf modules (models, data, strategies, stores) raise these without knowing the
settings module.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any


class ConfigError(ValueError):
    """A setting the user gave is not valid; the message is one line meant for the user."""


class StoreUnreachableError(RuntimeError):
    """The store cannot be reached; the message names the backend and its address."""


class RunStoppedError(RuntimeError):
    """The run cannot go on (e.g. fewer than ``min_clients`` sites returned)."""


class TooFewUpdatesError(RunStoppedError):
    """Fewer updates than needed passed the aggregator's checks; nothing was put or written.

    ``rejected`` holds ``(position in the task, site, reason)`` of every update left out.
    """

    def __init__(self, message: str, rejected: tuple[tuple[int, int, str], ...] = ()) -> None:
        super().__init__(message, rejected)  # both in ``args``: the error pickles back whole
        self.rejected = rejected

    def __str__(self) -> str:
        return str(self.args[0])


class WeightsFormatError(ValueError):
    """Bytes that are not a ProxyFlox weights object, or one that is damaged; never unpickled."""


class LayoutMismatchError(ValueError):
    """Weights whose names, shapes or dtypes differ from the model's; the message names one."""


def did_you_mean(word: str, choices: Iterable[str] | Mapping[str, Any]) -> str:
    """``" (did you mean 'rounds'?)"`` for a near miss, else ``""``.

    A word that starts one or a few of the choices (an abbreviation, ``--min``) names those.
    """
    choices = list(choices)
    starting = [choice for choice in choices if choice.startswith(word)] if word else []
    if len(starting) == 1:
        return f" (did you mean '{starting[0]}'?)"
    if starting:
        shown = ", ".join(f"'{choice}'" for choice in starting[:4])
        return f" (did you mean one of {shown}{', ...' if len(starting) > 4 else ''}?)"
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message never prints a huge value."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def unknown_value(value: str, allowed: Iterable[str]) -> str:
    """``"unknown value 'x' (did you mean 'y'?); allowed: ..."``, the key left to the caller."""
    allowed = list(allowed)
    suggestion = did_you_mean(value, allowed)
    return f"unknown value {short_repr(value)}{suggestion}; allowed: {', '.join(allowed)}"


def unknown_choice(key: str, value: str, allowed: Iterable[str]) -> ConfigError:
    """The error for a name that is not one of ``allowed`` (with a suggestion if one is close)."""
    return ConfigError(f"{key}: {unknown_value(value, allowed)}")


@contextmanager
def require_extra(package: str, extra: str, what: str) -> Iterator[None]:
    """Turn a missing optional package into one line saying which extra installs it."""
    try:
        yield
    except ModuleNotFoundError as err:
        raise ConfigError(
            f"{what} needs {package}, which is not installed here: pip install 'proxyflox[{extra}]'"
        ) from err
