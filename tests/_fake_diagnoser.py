"""A test-only diagnosing method: ranks by mean shift and names the kind of the metric that moved most."""

from __future__ import annotations

from dataclasses import replace

from _fake_methods import mean_shift_ranking

from llmrca.case import Observation
from llmrca.methods.base import BaseMethod, Ranking

KIND_OF_METRIC = {"cpu": "cpu", "mem": "memory", "latency": "network"}


class Diagnoser(BaseMethod):
    name = "fake-diagnose"

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        r = mean_shift_ranking(obs)
        metric = r.candidates[0].split("_", 1)[1]
        return replace(r, diagnosis=KIND_OF_METRIC[metric], explanation=f"{r.candidates[0]} moved most")


def register_diagnoser() -> None:
    from llmrca.methods import register

    register("fake-diagnose", "_fake_diagnoser:Diagnoser", "metric", {"metrics"}, "test-only")


def unregister_diagnoser() -> None:
    from llmrca.methods import registry

    registry._ENTRIES.pop("fake-diagnose", None)
