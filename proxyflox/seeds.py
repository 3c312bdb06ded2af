"""Every random draw of a run derives from (seed, stream, round, site): one place for the streams.

A run's randomness is then a pure function of the round number, which is why a resumed run
repeats an uninterrupted one bit for bit.
"""

from __future__ import annotations

import numpy as np

#: Stream ids, so that each use of the seed draws independent numbers.
PARTITION_STREAM, INIT_STREAM, SHUFFLE_STREAM, SAMPLING_STREAM, CODEC_STREAM = 1, 2, 3, 4, 5
#: dpfedavg's noise on the aggregate (and on the count of unclipped sites).
PRIVACY_STREAM = 6


def derive_seed(seed: int, *parts: int) -> int:
    """An independent 63-bit seed for (seed, round, site, ...) — stable across processes."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1, dtype=np.uint64)[0] >> 1)
