"""The method interface every RCA method implements, and the ranking it returns."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

from llmrca.case import Observation, service_of

Family = Literal["metric", "trace", "multi-source", "llm-aware"]
SOURCES = frozenset({"metrics", "traces", "logs"})


@dataclass(frozen=True)
class Ranking:
    """Candidates best first, with their scores (higher = more suspicious).

    Candidates are ``service_metric`` (fine-grained), ``service`` or ``service_operation``; the service is always
    the part before the first '_'.
    """

    candidates: tuple[str, ...]
    scores: tuple[float, ...]
    diagnosis: str | None = None  # the fault kind the method names (``llmrca faults`` lists kinds), if it does
    explanation: str | None = None  # why, in words, for a reader of the report

    def __post_init__(self) -> None:
        if len(self.candidates) != len(self.scores):
            raise ValueError("Ranking: candidates and scores differ in length")
        if len(set(self.candidates)) != len(self.candidates):
            raise ValueError("Ranking: duplicated candidates")

    @classmethod
    def from_scores(cls, names: Sequence[str], scores: Sequence[float] | np.ndarray) -> Ranking:
        """Sort by score, descending; NaN scores last; ties broken by name so the order is deterministic."""
        s = np.asarray(scores, dtype=float)
        if len(s) != len(names):
            raise ValueError("Ranking.from_scores: names and scores differ in length")
        key = np.where(np.isnan(s), -np.inf, s)
        order = sorted(range(len(names)), key=lambda i: (-key[i], names[i]))
        return cls(tuple(names[i] for i in order), tuple(float(s[i]) for i in order))

    @property
    def top_score(self) -> float:
        """The highest score of the ranking (how sure the method is that something is wrong); NaN if none."""
        finite = [s for s in self.scores if not math.isnan(s)]
        return max(finite) if finite else float("nan")

    def __len__(self) -> int:
        return len(self.candidates)

    def top(self, k: int) -> list[str]:
        return list(self.candidates[:k])

    def services(self) -> list[str]:
        """Service-level ranking: each service at the position of its first candidate."""
        seen: dict[str, None] = {}
        for c in self.candidates:
            seen.setdefault(service_of(c), None)
        return list(seen)

    def rank_of(self, target: str, *, level: Literal["service", "fine"] = "service") -> int | None:
        """1-based rank of ``target``; None when absent."""
        items = self.services() if level == "service" else list(self.candidates)
        try:
            return items.index(target) + 1
        except ValueError:
            return None


@runtime_checkable
class Method(Protocol):
    name: str
    family: Family
    needs: frozenset[str]

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking: ...


class BaseMethod:
    """Convenience base: keyword parameters are stored as given (as scikit-learn estimators do)."""

    name: ClassVar[str]
    family: ClassVar[Family] = "metric"
    needs: ClassVar[frozenset[str]] = frozenset({"metrics"})

    def __init__(self, **params: object) -> None:
        unknown = set(params) - set(self.default_params())
        if unknown:
            from llmrca.errors import UnknownNameError

            raise UnknownNameError(
                f"method {self.name!r}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(self.default_params())) or 'none'}"
            )
        self.params = {**self.default_params(), **params}

    @classmethod
    def default_params(cls) -> dict[str, object]:
        return {}

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.rank")

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({ps})"
