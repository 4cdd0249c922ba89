"""Dummy: a seeded random permutation of the metric columns, the chance baseline every method must beat."""

from __future__ import annotations

import zlib

import numpy as np

from llmrca.case import Observation
from llmrca.errors import MethodError
from llmrca.methods.base import BaseMethod, Ranking


class Dummy(BaseMethod):
    """Ranks the metric columns in a random order drawn from ``seed``; the score is the reversed position.

    Columns are sorted by name before shuffling, so the ranking depends on the seed and the set of columns, not
    on their order in the frame. The draw also depends on a digest of the data: two cases with the same columns
    (every case of a suite) get independent permutations, as a chance baseline must — with one permutation for
    all cases, AC@k would be 0 or 1 per target instead of near min(k, n)/n. It needs no injection time.
    """

    name = "dummy"
    family = "metric"
    needs = frozenset({"metrics"})

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        if obs.metrics is None or not obs.metric_columns:
            raise MethodError("dummy: no metric columns to rank")
        names = sorted(obs.metric_columns)
        digest = zlib.crc32(np.ascontiguousarray(obs.metrics[names].to_numpy(dtype=float)).tobytes())
        order = np.random.default_rng([seed, digest]).permutation(len(names))
        scores = np.empty(len(names))
        scores[order] = np.arange(len(names), 0, -1, dtype=float)
        return Ranking.from_scores(names, scores)
