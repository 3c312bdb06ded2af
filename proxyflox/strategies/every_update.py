"""What the strategies that need every update of a round at once share.

A coordinate-wise median, a trimmed mean and Krum's pairwise distances cannot be streamed:
the aggregator holds all ``n`` updates of the round. Beyond them it works in column blocks of
at most :data:`WORKSPACE_BYTES`, so its memory is about

    (n + 2) * model bytes + workspace   (+ n * n * 8 bytes for Krum's distances)

(the ``n`` updates, the result, and the current global model where sites send encoded changes
that the aggregator turns back into models; the workspace is at most ``WORKSPACE_BYTES`` and at
most the updates again in float64). The planner refuses a configuration whose
estimate exceeds ``strategy.max_memory_mb``, and one with too few updates per round for
``byzantine`` attackers, before the run starts.

These rules work on the sites' models, as Flower's do (the same numbers as on changes from one
global model: medians, trimmed means and distances move with a common offset), and ignore the
reported sample counts: an attacker can lie about those as easily as about its weights.
Integer buffers (BatchNorm's ``num_batches_tracked``) go through the same rule in float64 and
are rounded back; Krum's distances leave them out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from proxyflox.strategies.base import ServerState, Strategy, Update, is_float
from proxyflox.weights import Weights

#: Largest block of stacked columns the rules work on at a time.
WORKSPACE_BYTES = 16 * 2**20


@dataclass(frozen=True)
class EveryUpdateStrategy(Strategy):
    """Base of the robust rules: gather the round's models, check their number, combine them."""

    needs_every_update: ClassVar[bool] = True
    uses_global_model: ClassVar[bool] = False
    #: Attackers per round the rule must withstand (``f``).
    byzantine: int = 0

    def problem_with(self, num_updates: int) -> str | None:
        """Why the rule cannot work on ``num_updates`` updates with ``byzantine`` attackers."""
        return None

    def aggregation_bytes(self, num_updates: int, model_bytes: int) -> int:
        """The aggregator's memory for one aggregation of ``num_updates`` models."""
        workspace = min(WORKSPACE_BYTES, 2 * num_updates * model_bytes)
        return (num_updates + 2) * model_bytes + workspace

    def combine(self, models: list[Weights]) -> Weights:
        """The new global model from every site's model (their dicts may be emptied)."""
        raise NotImplementedError

    def aggregate_train(
        self,
        global_weights: Weights,
        updates: Iterable[Update],
        state: ServerState,
    ) -> tuple[Weights, ServerState]:
        """The rule over all the round's models; the state passes through unchanged."""
        models = gather(updates)
        problem = self.problem_with(len(models))
        if problem is not None:
            raise ValueError(problem)
        return self.combine(models), state


def gather(updates: Iterable[Update]) -> list[Weights]:
    """Every update's arrays, checked to be of one model (names and shapes)."""
    models: list[Weights] = []
    for update in updates:
        model = {name: np.asarray(array) for name, array in update.weights.items()}
        if models:
            first = models[0]
            if model.keys() != first.keys():
                raise ValueError("updates disagree on parameter names; are all sites on one model?")
            for name, array in model.items():
                if array.shape != first[name].shape:
                    raise ValueError(
                        f"updates disagree on the shape of {name!r}: {array.shape} and "
                        f"{first[name].shape}"
                    )
        models.append(model)
    if not models:
        raise ValueError("no updates to aggregate")
    return models


def column_blocks(rows: Sequence[np.ndarray], dtype: Any) -> Iterator[tuple[slice, np.ndarray]]:
    """The rows (one array per site, flattened) stacked ``(n, k)``, a column block at a time."""
    flat = [row.reshape(-1) for row in rows]
    size = flat[0].size
    step = max(1, WORKSPACE_BYTES // (len(flat) * np.dtype(dtype).itemsize))
    for start in range(0, size, step):
        columns = slice(start, min(start + step, size))
        block = np.empty((len(flat), columns.stop - start), dtype)
        for i, row in enumerate(flat):
            block[i] = row[columns]
        yield columns, block


def coordinatewise(models: list[Weights], rule: Callable[[np.ndarray], np.ndarray]) -> Weights:
    """``rule`` (an ``(n, k)`` block -> its ``k`` column results) over every entry.

    Float arrays keep their dtype; integer ones are worked on in float64 and rounded back. Each
    array leaves the models' dicts once it is done, so memory falls as the result grows.
    """
    result: Weights = {}
    for name in list(models[0]):
        rows = [model.pop(name) for model in models]
        first = rows[0]
        work = first.dtype if is_float(first) else np.dtype(np.float64)
        out = np.empty(first.size, work)
        for columns, block in column_blocks(rows, work):
            out[columns] = rule(block)
        del rows
        shaped = out.reshape(first.shape)
        result[name] = shaped if is_float(first) else np.rint(shaped).astype(first.dtype)
    return result


def plain_mean(block: np.ndarray) -> np.ndarray:
    """Mean of each column, summed in float64."""
    return block.mean(axis=0, dtype=np.float64)
