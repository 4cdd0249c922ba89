"""Test-only RCA methods for the runner's tests, registered by module path so worker processes import them."""

from __future__ import annotations

import os
import time

import numpy as np

from llmrca.case import Observation
from llmrca.methods.base import BaseMethod, Ranking


def mean_shift_ranking(obs: Observation) -> Ranking:
    """Columns by |mean after − mean before| / std before: a plain statistic, right on planted cases."""
    m = obs.metrics
    before = m[m["time"] < obs.inject_time]
    after = m[m["time"] >= obs.inject_time]
    cols = obs.metric_columns
    scores = [abs(after[c].mean() - before[c].mean()) / (before[c].std() + 1e-9) for c in cols]
    return Ranking.from_scores(cols, scores)


class MeanShift(BaseMethod):
    name = "fake-shift"

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        if hasattr(obs, "truth"):  # the runner must hand over the observation only
            raise AssertionError("the method was given the ground truth")
        return mean_shift_ranking(obs)


class Mutator(BaseMethod):
    """Vandalises the observation it was given; the runner must keep that from reaching the next method."""

    name = "fake-mutate"

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        for c in obs.metric_columns:
            obs.metrics[c] = 0.0
        obs.metrics.drop(columns=obs.metric_columns[:3], inplace=True)
        return Ranking.from_scores(obs.metric_columns, [0.0] * len(obs.metric_columns))


class Raiser(BaseMethod):
    name = "fake-raise"

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        raise ValueError("boom on\npurpose")


class Sleeper(BaseMethod):
    name = "fake-sleep"

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        time.sleep(3600)
        raise AssertionError("unreachable")


class Hog(BaseMethod):
    name = "fake-hog"

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        hoard = []
        while True:  # reserved, untouched pages: the cap is on address space, and touching is slow on VMs
            hoard.append(np.empty(2**24))  # 128 MB


class Short(BaseMethod):
    """Ranks a single service (the alphabetically last): the truth is absent on most cases."""

    name = "fake-short"

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        return Ranking((max(obs.services),), (1.0,))


class Toucher(BaseMethod):
    """Holds ``mb`` megabytes of written memory while ranking, so its peak memory is known."""

    name = "fake-touch"

    @classmethod
    def default_params(cls) -> dict[str, object]:
        return {"mb": 64}

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        block = np.ones(int(self.params["mb"]) * 2**20 // 8)
        return Ranking.from_scores(obs.metric_columns, [block[0]] * len(obs.metric_columns))


class Crash(BaseMethod):
    name = "fake-crash"

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        os.abort()  # SIGABRT: the worker process dies without a Python exception


class Counted(BaseMethod):
    """Appends one line per run to ``marker`` (so a test can count executions), after an optional delay."""

    name = "fake-count"

    @classmethod
    def default_params(cls) -> dict[str, object]:
        return {"marker": "", "delay": 0.0}

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        time.sleep(float(self.params["delay"]))
        if self.params["marker"]:
            fd = os.open(str(self.params["marker"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{obs.inject_time}\n".encode())
            finally:
                os.close(fd)
        return mean_shift_ranking(obs)


FAKES = {
    "fake-shift": "MeanShift", "fake-raise": "Raiser", "fake-sleep": "Sleeper", "fake-hog": "Hog",
    "fake-short": "Short", "fake-crash": "Crash", "fake-count": "Counted",
    "fake-mutate": "Mutator", "fake-touch": "Toucher",
}


def register_fakes() -> list[str]:
    from llmrca.methods import register

    for name, cls in FAKES.items():
        register(name, f"_fake_methods:{cls}", "metric", {"metrics"}, "test-only")
    return list(FAKES)


def unregister_fakes() -> None:
    from llmrca.methods import registry

    for name in FAKES:
        registry._ENTRIES.pop(name, None)
