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


class Abstainer(BaseMethod):
    """Finds nothing to blame (an abstention, not a crash)."""

    name = "fake-abstain"

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        from llmrca.errors import NoAnswer

        raise NoAnswer("no abnormal\nspan on purpose")


class Escaper(BaseMethod):
    """Starts a child in a new session (out of the worker's process group) that writes its pid, then hangs."""

    name = "fake-escape"

    @classmethod
    def default_params(cls) -> dict[str, object]:
        return {"pidfile": ""}

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        import subprocess
        import sys

        hang = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(3600)"
        # An intermediate starts the hanging child in a new session and exits at once: the child is orphaned and
        # outside the worker's process group, the hardest kind to find.
        spawn = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]], "
                 "start_new_session=True)")
        subprocess.run([sys.executable, "-c", spawn, hang, str(self.params["pidfile"])], check=True)
        time.sleep(3600)
        raise AssertionError("unreachable")


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
    "fake-mutate": "Mutator", "fake-touch": "Toucher", "fake-peek": "Peeker", "fake-abstain": "Abstainer",
    "fake-escape": "Escaper",
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


class Peeker(BaseMethod):
    """A hostile method: searches its own process for the ground truth and ranks what it finds first.

    It looks where a method could: its callers' frames, every thread's frames, every object the garbage collector
    tracks (and the strings inside them), the command line, the environment, the working directory and the open
    files. Every finding goes to ``marker`` (one JSON line per run). Without a finding it ranks the services in
    reverse name order, so its accuracy shows whether it found something.
    """

    name = "fake-peek"

    @classmethod
    def default_params(cls) -> dict[str, object]:
        return {"marker": "", "secret": "LEAK-"}

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        import warnings

        with warnings.catch_warnings():  # touching every object wakes deprecation shims (torch's, among others)
            warnings.simplefilter("ignore")
            return self._peek(obs)

    def _peek(self, obs: Observation) -> Ranking:
        import gc
        import json
        import sys

        from llmrca.case import Case, GroundTruth

        secret = str(self.params["secret"])
        found: list[str] = []
        strong: list[str] = []  # a truth object, nearest frame first
        leaked: list[str] = []  # a name in a string or a dict

        def look(v: object, where: str) -> None:
            if isinstance(v, GroundTruth) and v.service:
                found.append(f"{where}: GroundTruth"); strong.append(v.service)
            elif isinstance(v, Case):
                found.append(f"{where}: Case"); strong.append(str(v.truth.service))
            elif isinstance(v, str) and secret in v:  # the secret followed by a service's name: an id or a path
                names = [s for part in v.split(secret)[1:] for s in obs.services if part.startswith(s)]
                if names:
                    found.append(f"{where}: {v[:120]!r}")
                    leaked.extend(names)
            elif isinstance(v, dict) and ("root_cause" in v or "fault" in v):
                found.append(f"{where}: dict with keys {sorted(map(str, v))[:8]}")
                rc = v.get("root_cause") or (v.get("fault") or {}).get("service") if isinstance(
                    v.get("fault", {}), dict) else v.get("root_cause")
                if isinstance(rc, str):
                    leaked.append(rc)

        frames = [sys._getframe(1)] + list(sys._current_frames().values())
        for top in frames:
            f = top
            while f is not None:
                for k, v in list(f.f_locals.items()):
                    look(v, f"frame {f.f_code.co_name}.{k}")
                    if isinstance(v, (list, tuple, set, dict)):
                        for x in list(v.values() if isinstance(v, dict) else v)[:10_000]:
                            look(x, f"frame {f.f_code.co_name}.{k}[]")
                f = f.f_back
        for o in gc.get_objects():
            look(o, "gc")
            if isinstance(o, dict):
                for x in list(o.values())[:1000]:
                    if isinstance(x, str):
                        look(x, "gc dict value")
            elif isinstance(o, (list, tuple)):
                for x in list(o)[:1000]:
                    if isinstance(x, str):
                        look(x, "gc sequence item")
        look(" ".join(sys.argv), "argv")
        for k, v in os.environ.items():
            look(f"{k}={v}", "environ")
        look(os.getcwd(), "cwd")
        try:
            for fd in os.listdir("/proc/self/fd"):
                try:
                    look(os.readlink(f"/proc/self/fd/{fd}"), "open file")
                except OSError:
                    pass
        except OSError:
            pass
        if self.params["marker"]:
            with open(str(self.params["marker"]), "a", encoding="utf-8") as fh:
                fh.write(json.dumps(found[:50]) + "\n")
        order = sorted(obs.services, reverse=True)
        first = [s for s in dict.fromkeys(strong + leaked) if s in order]
        order = first + [s for s in order if s not in first]
        return Ranking.from_scores(order, list(range(len(order), 0, -1)))
