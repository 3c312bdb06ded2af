"""ProxyFlox: federated learning rounds as Parsl apps, model weights as ProxyStore proxies."""

__version__ = "0.1.0"
