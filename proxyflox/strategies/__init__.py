"""Server-side strategies, one file each; :func:`build_strategy` makes one from the settings."""

from __future__ import annotations

import dataclasses

from proxyflox.strategies.base import ServerState, Strategy, Update, state_scalars, weighted_mean
from proxyflox.strategies.dpfedavg import DPFedAvg
from proxyflox.strategies.every_update import EveryUpdateStrategy
from proxyflox.strategies.fedadagrad import FedAdagrad
from proxyflox.strategies.fedadam import FedAdam
from proxyflox.strategies.fedasync import FedAsync
from proxyflox.strategies.fedavg import FedAvg
from proxyflox.strategies.fedavgm import FedAvgM
from proxyflox.strategies.fedbuff import FedBuff
from proxyflox.strategies.fedmedian import FedMedian
from proxyflox.strategies.fedprox import FedProx
from proxyflox.strategies.fedtrimmedavg import FedTrimmedAvg
from proxyflox.strategies.fedyogi import FedYogi
from proxyflox.strategies.krum import Krum, MultiKrum
from proxyflox.strategies.settings import StrategySettings

__all__ = [
    "STRATEGIES",
    "DPFedAvg",
    "EveryUpdateStrategy",
    "FedAdagrad",
    "FedAdam",
    "FedAsync",
    "FedAvg",
    "FedAvgM",
    "FedBuff",
    "FedMedian",
    "FedProx",
    "FedTrimmedAvg",
    "FedYogi",
    "Krum",
    "MultiKrum",
    "ServerState",
    "Strategy",
    "StrategySettings",
    "Update",
    "build_strategy",
    "state_scalars",
    "weighted_mean",
]

#: ``strategy.name`` -> class; a new strategy is one module and one entry here. Asynchronous
#: ones say so by their class attribute ``asynchronous``, the robust ones that need every update
#: at once by ``needs_every_update``.
STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg,
        FedProx,
        FedAvgM,
        FedAdam,
        FedYogi,
        FedAdagrad,
        FedAsync,
        FedBuff,
        FedMedian,
        FedTrimmedAvg,
        Krum,
        MultiKrum,
        DPFedAvg,
    )
}


def build_strategy(settings: StrategySettings) -> Strategy:
    """The named strategy with the hyperparameters it takes from ``settings``.

    Settings left unset (``None``) keep the strategy's own default.
    """
    cls = STRATEGIES[settings.name]
    taken = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {
        name: value
        for name, value in settings.to_dict().items()
        if name in taken and value is not None
    }
    return cls(**values)
