"""The ``strategy`` section of an experiment: the hyperparameters of every strategy.

The strategy's name is checked against :data:`proxyflox.strategies.STRATEGIES` by the
experiment settings, which nest this section.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from proxyflox.schema import (
    Count,
    Decay,
    Float,
    Int,
    Maybe,
    NonNegative,
    Positive,
    Settings,
    Share,
    Str,
    one_of,
)
from proxyflox.strategies.dpfedavg import CLIPPINGS
from proxyflox.strategies.fedasync import STALENESS_FUNCTIONS
from proxyflox.strategies.fedbuff import STALENESS_SCALINGS


class StrategySettings(Settings):
    """The server strategy and its hyperparameters (each strategy reads the ones it has)."""

    name: Str = "fedavg"
    #: fedprox: strength of the proximal term on each site.
    proximal_mu: NonNegative = 0.01
    #: fedavgm, fedadam, fedyogi, fedadagrad, fedbuff: server step size (``null``: the
    #: strategy's default, 1.0 for fedavgm/fedbuff, 0.01 for the FedOpt family).
    server_lr: Maybe[Positive] = None
    #: fedavgm: server momentum.
    server_momentum: Decay = 0.9
    #: FedOpt family: first/second moment decay and adaptivity.
    beta1: Decay = 0.9
    beta2: Decay = 0.99
    tau: NonNegative = 1e-3
    #: fedasync: mixing weight, and the staleness function ``constant``, ``polynomial``
    #: ``(s+1)^-a`` or ``hinge`` (1 up to staleness b, then ``1/(a(s-b)+1)``).
    alpha: Share = 0.6
    staleness: Annotated[Str, one_of(STALENESS_FUNCTIONS)] = "polynomial"
    staleness_a: NonNegative = 0.5
    staleness_b: NonNegative = 4.0
    #: fedbuff: updates per aggregation.
    buffer_size: Count = 3
    #: fedbuff: ``sqrt`` scales each change by ``1/sqrt(1 + staleness)`` and takes their plain
    #: mean (the paper's rule); ``none``: the sample-weighted mean, unscaled.
    staleness_scaling: Annotated[Str, one_of(STALENESS_SCALINGS)] = "sqrt"
    #: fedmedian, fedtrimmedavg, krum, multikrum: attackers per round to withstand (f).
    byzantine: Annotated[Int, Field(ge=0)] = 0
    #: fedtrimmedavg: share of the updates dropped from each end of every entry.
    trim_fraction: Annotated[Float, Field(ge=0, lt=0.5)] = 0.2
    #: multikrum: how many of the lowest-scoring models are averaged (m); ``null``: n - byzantine.
    keep: Maybe[Count] = None
    #: fedmedian, fedtrimmedavg, krum, multikrum hold every update of a round at once: a
    #: configuration whose aggregation would need more than this is refused before it runs.
    max_memory_mb: Positive = 4096.0
    #: dpfedavg: noise multiplier ``z`` (noise stddev ``z * clip_norm`` on the sum of changes).
    noise_multiplier: NonNegative = 1.0
    #: dpfedavg: each site's change is clipped to this L2 norm (the first one if adaptive).
    clip_norm: Positive = 1.0
    #: dpfedavg: ``fixed`` clip norm, or ``adaptive`` (Andrew et al. 2021).
    clipping: Annotated[Str, one_of(CLIPPINGS)] = "fixed"
    #: dpfedavg adaptive: target share of sites whose change is within the clip norm.
    target_quantile: Share = 0.5
    #: dpfedavg adaptive: the clip norm's geometric learning rate.
    clip_learning_rate: Positive = 0.2
    #: dpfedavg adaptive: noise on the count of unclipped sites (``null``: sites per round / 20).
    clip_count_stddev: Maybe[NonNegative] = None
    #: dpfedavg: epsilon is reported at this delta (below 1/sites).
    delta: Annotated[Float, Field(gt=0, lt=1)] = 1e-5
