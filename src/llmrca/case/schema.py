"""Column schemas of the three telemetry frames (see docs/case-format.md)."""

from __future__ import annotations

import pandas as pd

TIME = "time"

# Span table: one row per span. Times in microseconds since the epoch.
TRACE_COLUMNS: dict[str, str] = {
    "trace_id": "string",
    "span_id": "string",
    "parent_span_id": "string",  # null for a root span
    "service": "string",
    "operation": "string",
    "start_time_us": "int64",
    "duration_us": "int64",
    "status": "string",  # "OK" or "ERROR"
    "http_status": "Int64",  # null where the span is not an HTTP span
    "attributes": "string",  # JSON object text
}

# Log table: one row per line. Time in unix seconds.
LOG_COLUMNS: dict[str, str] = {
    "time": "float64",
    "service": "string",
    "level": "string",
    "message": "string",
    "template": "string",
}

SPAN_STATUSES = ("OK", "ERROR")


def empty_frame(columns: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns.items()})


def empty_traces() -> pd.DataFrame:
    return empty_frame(TRACE_COLUMNS)


def empty_logs() -> pd.DataFrame:
    return empty_frame(LOG_COLUMNS)


def coerce(frame: pd.DataFrame, columns: dict[str, str], where: str) -> pd.DataFrame:
    """Cast ``frame`` to the schema; raises ``CaseError`` naming the missing or uncastable column."""
    from llmrca.errors import CaseError

    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CaseError([f"missing column(s) {', '.join(missing)}"], where=where)
    out = {}
    for c, t in columns.items():
        try:
            out[c] = frame[c].astype(t)
        except (TypeError, ValueError) as e:
            raise CaseError([f"column {c!r} cannot be read as {t}: {e}"], where=where) from None
    extra = [c for c in frame.columns if c not in columns]
    for c in extra:  # extra columns are kept, never dropped silently
        out[c] = frame[c]
    return pd.DataFrame(out, index=pd.RangeIndex(len(frame)))


def split_column(column: str) -> tuple[str, str]:
    """``<service>_<metric>`` → (service, metric). Service names never contain '_'."""
    service, _, metric = column.partition("_")
    return service, metric


def service_of(candidate: str) -> str:
    return candidate.split("_", 1)[0]
