"""Poisoned updates, for experiments with robust aggregation only.

A site given ``site_options.LABEL.attack`` trains honestly, then replaces what it sends:

- ``sign_flip``: the trained change reversed and scaled, ``received - scale * (trained -
  received)`` (``scale = attack_scale``), on the float arrays; integer buffers (BatchNorm's
  ``num_batches_tracked``) are sent as trained, since a counter cannot be flipped plausibly.

It runs on the site, before the update is encoded and put, so the aggregator sees it exactly as
it would see an attacker's update. Numpy only.
"""

from __future__ import annotations

import numpy as np

from proxyflox.weights import Weights

#: ``site_options.LABEL.attack`` names.
ATTACKS = ("sign_flip",)


def poisoned(attack: str, scale: float, trained: Weights, received: Weights) -> Weights:
    """The model an attacking site sends instead of ``trained`` (it was sent ``received``)."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; known: {', '.join(ATTACKS)}")
    return {
        name: (received[name] - scale * (array - received[name])).astype(array.dtype)
        if np.issubdtype(array.dtype, np.floating)
        else array
        for name, array in trained.items()
    }
