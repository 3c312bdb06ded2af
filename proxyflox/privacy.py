"""Differential privacy outside the strategy: clipping on the site, accounting on the controller.

A site clips its own change (:func:`clip_change`) before it puts it, so its raw change never
leaves it; the ``dpfedavg`` strategy adds the noise on the aggregator; the controller tells the
privacy spent so far (:func:`epsilon`), from Google's ``dp_accounting`` (extra
``proxyflox[dp]``), imported only when a private run asks.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from proxyflox.weights import Weights


def l2_norm(weights: Weights) -> float:
    """L2 norm of all float arrays together, as one flat vector (accumulated in float64)."""
    squares = 0.0
    for array in weights.values():
        if np.issubdtype(array.dtype, np.floating):
            flat = array.ravel().astype(np.float64, copy=False)
            squares += float(np.dot(flat, flat))
    return math.sqrt(squares)


def clip_change(change: Weights, clip_norm: float) -> tuple[Weights, bool]:
    """Scale a model change to L2 norm at most ``clip_norm``, in place; was it within already?

    The norm is over every float array as one vector (McMahan et al.'s flat clipping). Integer
    arrays (BatchNorm's ``num_batches_tracked``) become zeros: their change counts the site's
    batches, which would tell its data size unclipped and unnoised.
    """
    norm = l2_norm(change)
    within = norm <= clip_norm
    scale = 1.0 if within else clip_norm / norm
    for name, array in change.items():
        if not np.issubdtype(array.dtype, np.floating):
            change[name] = np.zeros_like(array)
        elif not within:
            if not array.flags.writeable:
                array = change[name] = array.copy()
            np.multiply(array, array.dtype.type(scale), out=array)
    return change, within


def adjusted_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """``z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2``: the update's share of the noise budget ``z``.

    With adaptive clipping the noised count of unclipped sites is a second Gaussian query on the
    same data (sensitivity 1/2, the bits counted around 1/2, Andrew et al. 2021); the two together
    cost what one query with noise multiplier ``z`` costs. ``z = 0`` (no noise) gives 0.

    Raises:
        ValueError: if ``2 sigma_b <= z`` (no noise is left for the update).
    """
    if noise_multiplier == 0:
        return 0.0
    if 2 * count_stddev <= noise_multiplier:
        raise ValueError(
            f"2 x clip_count_stddev = {2 * count_stddev:g} must exceed noise_multiplier = "
            f"{noise_multiplier:g} for adaptive clipping (z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2)"
        )
    return float((noise_multiplier**-2 - (2 * count_stddev) ** -2) ** -0.5)


def epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """Privacy spent after ``rounds`` rounds: epsilon at ``delta``, from an RDP accountant.

    Each round is ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``, composed ``rounds`` times
    (RDP of a composition is the sum: one round's RDP is computed once and scaled, so the figure
    depends on the round number alone and a resumed run reports what an uninterrupted one
    would). Infinite without noise.

    Raises:
        ModuleNotFoundError: if ``dp_accounting`` is not installed.
    """
    return _epsilon(float(noise_multiplier), float(sampling_rate), int(rounds), float(delta))


def _epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    orders, one_round = _one_round_rdp(noise_multiplier, sampling_rate)
    return float(compute_epsilon(orders, rounds * one_round, delta)[0])


@functools.lru_cache(maxsize=16)
def _one_round_rdp(noise_multiplier: float, sampling_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """The accountant's orders and one round's RDP at each (computed once per run: ~0.5 s)."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    with _quiet_absl():
        accountant.compose(
            dp_accounting.PoissonSampledDpEvent(
                sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
            )
        )
    return accountant.orders, accountant.rdp


def check_accountant() -> None:
    """Import the accountant's library (``ModuleNotFoundError`` where it is missing)."""
    import dp_accounting  # noqa: F401


@contextmanager
def _quiet_absl() -> Iterator[None]:
    # The accountant logs a warning for each fractional order whose series does not converge
    # and leaves that order out; the bound is still valid, the warnings would flood the run.
    # absl also calls logging.basicConfig() on its first message where the root logger has no
    # handler, which would print every library's DEBUG records (Parsl's) from then on.
    logger, root = logging.getLogger("absl"), logging.getLogger()
    level = logger.level
    placeholder = logging.NullHandler()
    logger.setLevel(logging.ERROR)
    root.addHandler(placeholder)
    try:
        yield
    finally:
        root.removeHandler(placeholder)
        logger.setLevel(level)
