"""FedAvg: the new global model is the sample-weighted mean of the sites' models."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from proxyflox.weights import Weights


class FedAvg:
    """Sample-weighted mean, accumulated as a running sum.

    Updates are consumed one at a time from an iterable, so memory stays at one float64
    accumulator plus the update being added, whatever the number of sites. Accumulating in
    float64 makes one site's update come back bit for bit (``x * n / n`` is exact there).
    """

    def aggregate(self, updates: Iterable[tuple[Weights, int]]) -> Weights:
        """Weighted mean of ``(weights, num_samples)`` pairs, in the first update's dtypes."""
        total: dict[str, np.ndarray] | None = None
        dtypes: dict[str, np.dtype] = {}
        count = 0
        for weights, num_samples in updates:
            if num_samples <= 0:
                raise ValueError(f"an update reports {num_samples} samples; need at least 1")
            if total is None:
                total = {name: np.zeros(a.shape, dtype=np.float64) for name, a in weights.items()}
                dtypes = {name: a.dtype for name, a in weights.items()}
            elif weights.keys() != total.keys():
                raise ValueError("updates disagree on parameter names; are all sites on one model?")
            for name, array in weights.items():
                total[name] += np.asarray(array, dtype=np.float64) * num_samples
            count += num_samples
            del weights, array  # release this update before the iterator fetches the next
        if total is None:
            raise ValueError("no updates to aggregate")
        mean: Weights = {}
        for name, summed in total.items():
            summed /= count
            if np.issubdtype(dtypes[name], np.integer):
                summed = np.rint(summed)  # e.g. BatchNorm's num_batches_tracked
            mean[name] = summed.astype(dtypes[name])
        return mean
