"""Metric views: the study's feature set and the full telemetry, and the column rule that tells them apart.

Every column is ``<service>_<metric>``. The **study view** is the feature set the reference study gave its RCA
methods, under its names; a column belongs to it when its metric part is one of :data:`STUDY_METRICS` (the
catalogue's study entries, ``llmrca.case.catalog``):

    ctn_cpu, ctn_memory, ctn_network, ctn_gpu   container CPU cores, working-set bytes, transmitted packets/s,
                                                Ray's GPU utilisation (%)
    latency                                     mesh p90 latency of requests to the service (ms)
    node_cpu, node_memory, node_network         node CPU cores, memory used (bytes), transmitted packets/s

Every other column is the **full view**: the telemetry a real deployment exports, named after its source with the
exporter prefix dropped (``vllm:``, ``DCGM_FI_DEV_``, ``DCGM_FI_``, ``container_``, ``node_``, ``istio_``),
lower-cased, ``:`` replaced by ``-``; counters as per-second rates without ``_total``; histograms one column per
quantile (``time_to_first_token_seconds_p95``). The full view repeats what the study view holds under the
sources' own names (``cpu_usage_seconds`` = ``ctn_cpu``, ``request_duration_milliseconds_p90`` = ``latency`` …),
so each view stands alone; ``"all"`` is both.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal, TypeVar

import pandas as pd

from llmrca.case.catalog import CATALOG, STUDY_METRICS
from llmrca.case.model import Case, Observation
from llmrca.case.schema import TIME, split_column
from llmrca.errors import CaseError, UnknownNameError

VIEWS = ("study", "full", "all")

View = Literal["study", "full", "all"]
T = TypeVar("T", Case, Observation, pd.DataFrame)


def view_of(column: str) -> str:
    """'study' or 'full' for a metric column (see the module docs)."""
    return "study" if split_column(column)[1] in STUDY_METRICS else "full"


def columns(names: list[str], view: View) -> list[str]:
    if view not in VIEWS:
        raise UnknownNameError(f"unknown view {view!r}; known: {', '.join(VIEWS)}")
    return [c for c in names if c != TIME and (view == "all" or view_of(c) == view)]


def select_view(case_or_obs: T, view: View = "study", *, where: str | None = None) -> T:
    """The same case (or observation, or metrics frame) with only the metric columns of ``view``.

    Raises ``CaseError`` (naming ``where``) when the view leaves no metric column, e.g. 'study' on RCAEval data.
    """
    if isinstance(case_or_obs, pd.DataFrame):
        keep = columns(list(case_or_obs.columns), view)
        if not keep and view != "all":
            raise CaseError([f"metrics: no column belongs to the {view!r} view"], where=where)
        return case_or_obs[[TIME, *keep]] if TIME in case_or_obs.columns else case_or_obs[keep]
    if isinstance(case_or_obs, Case):
        obs = select_view(case_or_obs.observation, view, where=where)
        return case_or_obs.with_observation(metrics=obs.metrics)
    if isinstance(case_or_obs, Observation):
        return replace(case_or_obs, metrics=select_view(case_or_obs.metrics, view, where=where))
    raise TypeError(f"select_view: expected a Case, Observation or metrics DataFrame, got {type(case_or_obs).__name__}")


def column_order(names: list[str], services: list[str]) -> list[str]:
    """Study columns first (by service order), then the full view (by service order); stable otherwise."""
    rank = {s: i for i, s in enumerate(services)}

    def key(item: tuple[int, str]) -> tuple[int, int, int]:
        i, c = item
        svc, _ = split_column(c)
        return (0 if view_of(c) == "study" else 1, rank.get(svc, len(rank)), i)

    return [c for _, c in sorted(enumerate(names), key=key)]


# --- Which view a case can be given (issue 16: one --view for every command) ---------------------------------
# A view splits llmrca's own telemetry: the columns of the metric catalogue. A case whose metrics are not all
# catalogue columns (an RCAEval folder, a synthetic or hand-made case) has no such split, so every view of it is
# the whole metrics table: the same --view default works on every case instead of failing on foreign data.
_CATALOG_METRICS = frozenset(m.metric for m in CATALOG)


def is_catalog_telemetry(names: list[str]) -> bool:
    """Whether every metric column's metric part is one of the catalogue's (a simulated, live or collected case)."""
    cols = [c for c in names if c != TIME]
    return bool(cols) and all(split_column(c)[1] in _CATALOG_METRICS for c in cols)


def effective_view(case_or_obs: Case | Observation | pd.DataFrame | list[str], view: str) -> str:
    """``view`` where it applies (see above), else ``"all"``; an unknown name raises ``UnknownNameError``."""
    if view not in VIEWS:
        raise UnknownNameError(f"unknown view {view!r}; known: {', '.join(VIEWS)}")
    if isinstance(case_or_obs, Case):
        case_or_obs = case_or_obs.observation
    if isinstance(case_or_obs, Observation):
        case_or_obs = case_or_obs.metrics
    names = list(case_or_obs.columns) if isinstance(case_or_obs, pd.DataFrame) else list(case_or_obs)
    return view if view == "all" or is_catalog_telemetry(names) else "all"
