"""What a uniformly random ranker scores, so accuracy tests can demand a margin over chance instead of a round
number that chance may reach."""

from __future__ import annotations

import numpy as np


def random_avg_at_k_floor(n_services: int, n_cases: int, k: int = 5, alpha: float = 1e-3) -> float:
    """The smallest Avg@k over ``n_cases`` cases of ``n_services`` candidates each that a uniformly random ranking
    reaches with probability at most ``alpha`` (exact, not simulated).

    With the truth at rank r, a case's Avg@k is max(0, k - r + 1) / k, so k times the sum over cases is an integer:
    its distribution is the n_cases-fold convolution of one case's.
    """
    one = np.zeros(k + 1)
    for r in range(1, n_services + 1):
        one[max(0, k - r + 1)] += 1.0 / n_services
    dist = np.array([1.0])
    for _ in range(n_cases):
        dist = np.convolve(dist, one)
    tail = np.cumsum(dist[::-1])[::-1]  # tail[s] = P(sum >= s)
    s = int(np.argmax(tail <= alpha))
    return s / (k * n_cases)


def random_ranks(n_services: int, n_cases: int, seed: int) -> list[int]:
    """The truth's rank under a uniformly random ranking, per case."""
    return [int(r) for r in np.random.default_rng(seed).integers(1, n_services + 1, size=n_cases)]
