"""Server-side aggregation strategies, one file each."""

from proxyflox.strategies.fedavg import FedAvg

__all__ = ["FedAvg"]
