"""RCAEval case folders (Pham et al., WWW'25): read RE1/RE2/RE3 cases, write ours in their layout.

Layouts (see docs/rcaeval.md for the full mapping in both directions):

- RE1: ``data.csv`` (``time`` in unix s + ``<service>_<metric>`` columns) and ``inject_time.txt``.
- RE2/RE3: ``metrics.csv`` and/or ``simple_metrics.csv``, ``logs.csv`` (``timestamp`` in ns), ``traces.csv``
  (``startTime``/``duration`` in µs), the derived series ``logts.csv``, ``tracets_err.csv``, ``tracets_lat.csv``
  (``time`` + ``<service>_<x>`` columns, 15 s windows) and ``inject_time.txt``.

The ground truth is the folder convention ``<service>_<fault>/<repetition>/``; ``normal/<repetition>/`` holds a
fault-free case. Our own writer adds ``llmrca.json``, a sidecar that carries what RCAEval's layout cannot (exact
injection time, full ground truth, topology, interval, provenance); RCAEval's tools ignore it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmrca.case import LOG_COLUMNS, NORMAL, TIME, TRACE_COLUMNS, Case, GroundTruth, Observation, Topology
from llmrca.case.model import UNKNOWN  # the fault type of a folder off <service>_<fault>/<repetition>
from llmrca.case.schema import coerce, empty_logs, empty_traces
from llmrca.case.validation import Problem, check_case
from llmrca.errors import CaseError, FormatError, naming
from llmrca.io.case_json import read_fields
from llmrca.io.native import case_to_json

INJECT_TIME = "inject_time.txt"
DATA = "data.csv"
METRICS = "metrics.csv"
SIMPLE_METRICS = "simple_metrics.csv"
# metrics.csv is the fuller (raw) table in RE2/RE3, so it wins when a folder has several.
METRIC_FILES = (METRICS, SIMPLE_METRICS, DATA)
LOGS = "logs.csv"
TRACES = "traces.csv"
LOGTS = "logts.csv"
TRACETS_ERR = "tracets_err.csv"
TRACETS_LAT = "tracets_lat.csv"
SIDECAR = "llmrca.json"
SIDECAR_FORMAT = "llmrca-rcaeval-sidecar"
SIDECAR_VERSION = 1
SOURCE = "rcaeval"  # Observation.source of a folder without our sidecar

DERIVED_WINDOW_S = 15  # RCAEval's logts/tracets windows
NS_PER_S = 1_000_000_000

# Derived file -> (raw file it is computed from, prefix given to its series when merged into the metrics).
DERIVED = {
    LOGTS: (LOGS, "logts-"),
    TRACETS_ERR: (TRACES, "tracets-err-"),
    TRACETS_LAT: (TRACES, "tracets-lat-"),
}

_FAULT_DIR = re.compile(r"([^_\s/\\]+)_([^_\s/\\]+)")
_SYSTEM_DIR = re.compile(r"RE[1-3]-[A-Za-z]+|online-boutique|sock-shop-\d|train-ticket", re.IGNORECASE)
_SAFE_NAME = re.compile(r"[A-Za-z0-9.-]+")


class RcaevalWarning(UserWarning):
    """Something in an RCAEval folder was read with a documented fallback (unknown truth, derived-only series)."""


# --------------------------------------------------------------------------------------------------- detection


def is_rcaeval_dir(path: str | Path) -> bool:
    """True for a folder holding an RCAEval metrics file (``data.csv``, ``metrics.csv`` or
    ``simple_metrics.csv``). A missing ``inject_time.txt`` makes it a broken case (reported on read), not a non-case."""
    p = Path(path)
    return p.is_dir() and any((p / f).is_file() for f in METRIC_FILES)


# ------------------------------------------------------------------------------------------------------ reading


def read_case(
    path: str | Path,
    *,
    root: str | Path | None = None,
    validate: bool = True,
    metrics_file: str | None = None,
) -> Case:
    """Read one RCAEval case folder.

    ``root`` is the suite folder the case id is taken relative to (``RE2-OB/checkoutservice_cpu/1``); without it
    the id is ``<service>_<fault>/<repetition>``. ``metrics_file`` overrides the choice among
    ``metrics.csv`` > ``simple_metrics.csv`` > ``data.csv``.
    """
    case_dir = Path(path)
    if not case_dir.is_dir():
        raise FormatError(f"{case_dir}: no such folder")
    present = sorted(f.name for f in case_dir.iterdir() if f.is_file())
    metrics_name = _pick_metrics_file(case_dir, present, metrics_file)
    sidecar = _read_sidecar(case_dir / SIDECAR) if SIDECAR in present else None
    inject_raw, inject_time = _read_inject_time(case_dir / INJECT_TIME)

    metrics, dropped, renamed = read_metrics_csv(case_dir / metrics_name)
    rc: dict[str, Any] = {
        "layout": "RE1" if metrics_name == DATA and not {LOGS, TRACES, METRICS, SIMPLE_METRICS} & set(present)
        else "RE2",
        "metrics_file": metrics_name,
        "inject_time_txt": inject_raw,
    }
    ignored: dict[str, str] = {}
    for f in METRIC_FILES:
        if f in present and f != metrics_name:
            ignored[f] = f"another metrics file; {metrics_name} was read"

    traces = read_traces_csv(case_dir / TRACES) if TRACES in present else empty_traces()
    logs = read_logs_csv(case_dir / LOGS) if LOGS in present else empty_logs()

    metrics, merged = _merge_derived_only(case_dir, present, metrics, ignored, dropped)
    if merged:
        rc["merged_derived"] = merged
    known = {INJECT_TIME, SIDECAR, LOGS, TRACES, *METRIC_FILES, *DERIVED}
    other = [f for f in present if f not in known and not f.startswith(".")]
    if other:  # e.g. cluster_info.json, pod-node-*.csv, RE1's simple_data.csv: listed, not read
        rc["other_files"] = other
    if ignored:
        rc["ignored_files"] = ignored

    case_id, truth, system = _truth_from_path(case_dir, root)
    if truth.fault_type == UNKNOWN:
        rc["truth"] = "unknown: the folder does not follow <service>_<fault>/<repetition>"
        warnings.warn(
            f"{case_dir}: folder names do not follow RCAEval's <service>_<fault>/<repetition>; "
            "ground truth is unknown (service=None, fault_type='unknown')",
            RcaevalWarning,
            stacklevel=2,
        )
    elif not truth.is_normal:
        truth = GroundTruth(service=truth.service, fault_type=truth.fault_type, start=inject_time)

    topology, interval, provenance = Topology(), None, {}
    if sidecar is not None:
        if (sidecar.get("export") or {}).get("log_cluster_id") == "derived" and "cluster_id" in logs.columns:
            logs = logs.drop(columns=["cluster_id"])  # numbered by our writer, not part of the case
        inject_time, truth, system, topology, interval, provenance = _apply_sidecar(
            sidecar, case_dir, inject_time, truth, system, rc
        )
        if sidecar.get("id") not in (None, case_id):
            rc["original_id"] = sidecar["id"]
    if dropped:
        provenance["dropped_columns"] = list(provenance.get("dropped_columns", [])) + dropped
    if renamed:
        provenance["renamed_columns"] = {**provenance.get("renamed_columns", {}), **renamed}
    if "rcaeval" in provenance:  # the case came from RCAEval before it was written here
        rc["source"] = provenance["rcaeval"]
    provenance["rcaeval"] = rc

    # A folder llmrca did not write is foreign data: methods pick their defaults for it (the metric window of
    # RCAEval's runner, ``llmrca.methods.window``); one we wrote keeps the source its sidecar names (None: ours).
    source = SOURCE if sidecar is None else (sidecar.get("source") if isinstance(sidecar.get("source"), str) else None)
    obs = Observation(
        metrics=metrics, traces=traces, logs=logs, inject_time=inject_time, topology=topology, interval=interval,
        source=source,
    )
    case = Case(id=case_id, observation=obs, truth=truth, system=system, provenance=provenance)
    if validate:
        check_case(case, where=str(case_dir))
    return case


def _merge_derived_only(
    case_dir: Path, present: list[str], metrics: pd.DataFrame, ignored: dict[str, str], dropped: list[str]
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Skip derived files whose raw file was read; merge the others' series into the metrics (there is nothing
    to rebuild them from, and RCAEval's multi-source methods rank them beside the metrics)."""
    merged: dict[str, int] = {}
    for derived, (raw, prefix) in DERIVED.items():
        if derived not in present:
            continue
        if raw in present:
            ignored[derived] = f"derived from {raw}, which was read"
            continue
        series, d_dropped = _read_derived(case_dir / derived, prefix)
        metrics = _merge_on_time(metrics, series, case_dir / derived)
        merged[derived] = series.shape[1] - 1
        dropped += d_dropped
        warnings.warn(
            f"{case_dir / derived}: no {raw} to derive it from; its {series.shape[1] - 1} series were merged into "
            f"the metrics as <service>_{prefix}<name>",
            RcaevalWarning,
            stacklevel=3,
        )
    return metrics, merged


def _pick_metrics_file(case_dir: Path, present: list[str], override: str | None) -> str:
    if override is not None:
        if override not in METRIC_FILES:
            raise FormatError(f"metrics_file must be one of {', '.join(METRIC_FILES)}, not {override!r}")
        if override not in present:
            raise FormatError(f"{case_dir / override}: file missing")
        return override
    for f in METRIC_FILES:
        if f in present:
            return f
    raise FormatError(f"{case_dir}: no metrics file (expected one of {', '.join(METRIC_FILES)})")


def _read_inject_time(path: Path) -> tuple[str, float]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: editors on Windows start the file with a BOM
    except FileNotFoundError:
        raise FormatError(f"{path}: file missing (RCAEval cases give the injection time there)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: cannot be read ({e})") from None
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    try:
        value = float(first)
    except ValueError:
        raise FormatError(f"{path}: inject_time {first!r} is not a number (expected unix seconds)") from None
    if not math.isfinite(value):
        raise FormatError(f"{path}: inject_time {first!r} is not finite")
    return first, value


def _read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    if int(pd.__version__.split(".")[0]) < 3 and kwargs.get("dtype") is not str:
        kwargs.setdefault("float_precision", "round_trip")  # pandas 3 parses floats exactly by default
    try:
        return pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        raise FormatError(f"{path}: file missing") from None
    except pd.errors.EmptyDataError:
        raise FormatError(f"{path}: empty file (expected a CSV header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise FormatError(f"{path}: malformed CSV ({e})") from None


def _header(path: Path) -> list[str]:
    """The header as written: pandas renames duplicated names ('a', 'a.1'), which would hide them."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FormatError(f"{path}: malformed CSV ({e})") from None


def read_metrics_csv(path: Path) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
    """A wide ``time`` + ``<service>_<metric>`` CSV → (metrics, dropped all-NaN columns, renames).

    ``<svc>_latency-90`` becomes ``<svc>_latency`` unless that column exists (RCAEval's own reading of it).
    """
    header = _header(path)
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise CaseError([Problem("error", "metrics", f"duplicated column name(s) {', '.join(map(repr, dup))}")],
                        where=str(path))
    frame = _read_csv(path)
    frame = _numeric_time(frame, path)
    cols = [c for c in frame.columns if c != TIME]
    _check_names(cols, path)
    bad = []
    for c in cols:
        if not pd.api.types.is_numeric_dtype(frame[c]):
            conv = pd.to_numeric(frame[c], errors="coerce")
            if (conv.isna() & frame[c].notna()).any():
                bad.append(c)
            else:
                frame[c] = conv
    if bad:
        raise CaseError([Problem("error", f"metrics[{c!r}]", "non-numeric values") for c in bad], where=str(path))
    frame[cols] = frame[cols].astype("float64")
    dropped = [c for c in cols if len(frame) and frame[c].isna().all()]
    if dropped:
        frame = frame.drop(columns=dropped)
    renamed = {}
    names = set(frame.columns)
    for c in frame.columns:
        if c.endswith("_latency-90"):
            target = c[: -len("-90")]
            if target not in names:
                renamed[c] = target
    if renamed:
        frame = frame.rename(columns=renamed)
    return frame.reset_index(drop=True), dropped, renamed


def _numeric_time(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    if TIME not in frame.columns:
        raise FormatError(f"{path}: no 'time' column (RCAEval metrics give unix seconds in 'time')")
    t = pd.to_numeric(frame[TIME], errors="coerce")
    bad = t.isna() & frame[TIME].notna()
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        raise FormatError(f"{path}: field 'time' holds a non-numeric value {frame[TIME].iloc[i]!r} (row {i + 1})")
    frame = frame.copy()
    frame[TIME] = t.astype("float64")
    cols = [TIME] + [c for c in frame.columns if c != TIME]
    return frame[cols]


def _check_names(cols: list[str], path: Path) -> None:
    bad = [c for c in cols if not _good_name(c)]
    if bad:
        raise CaseError(
            [Problem("error", f"metrics[{c!r}]", "column name breaks the '<service>_<metric>' rule") for c in bad],
            where=str(path),
        )


def _good_name(c: Any) -> bool:
    service, sep, metric = str(c).partition("_")
    return bool(sep and service.strip() and metric and service.strip() == service)


def _read_derived(path: Path, prefix: str) -> tuple[pd.DataFrame, list[str]]:
    frame = _numeric_time(_read_csv(path), path)
    cols = [c for c in frame.columns if c != TIME]
    _check_names(cols, path)
    for c in cols:
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("float64")
    dropped = [c for c in cols if len(frame) and frame[c].isna().all()]
    frame = frame.drop(columns=dropped)
    renames = {}
    for c in frame.columns[1:]:
        service, rest = c.split("_", 1)
        renames[c] = f"{service}_{prefix}{rest}"
    return frame.rename(columns=renames), [f"{path.name}:{c}" for c in dropped]


def _merge_on_time(metrics: pd.DataFrame, series: pd.DataFrame, path: Path) -> pd.DataFrame:
    clash = sorted(set(metrics.columns) & set(series.columns) - {TIME})
    if clash:
        raise CaseError([Problem("error", "metrics", f"derived series clash with metric columns {clash}")],
                        where=str(path))
    out = metrics.merge(series, on=TIME, how="outer", sort=True)
    return out.reset_index(drop=True)


# traces.csv ------------------------------------------------------------------------------------------------

# RCAEval's columns; "time" (a display string) and "startTimeMillis" are carried by "startTime".
_TRACE_KNOWN = {"time", "traceID", "spanID", "parentSpanID", "serviceName", "methodName", "operationName",
                "startTimeMillis", "startTime", "duration", "statusCode"}
_TRACE_OURS = {"status", "attributes"}  # added by our writer; an "attributes" column marks a file we wrote


def read_traces_csv(path: Path) -> pd.DataFrame:
    """RCAEval ``traces.csv`` → our span table (µs times, OK/ERROR status, JSON attributes)."""
    raw = _read_text_table(path, ("startTime", "startTimeMillis", "duration"))
    if raw.empty:
        return empty_traces()
    missing = [c for c in ("traceID", "spanID", "serviceName", "duration") if c not in raw.columns]
    if "startTime" not in raw.columns and "startTimeMillis" not in raw.columns:
        missing.append("startTime")
    if missing:
        raise FormatError(f"{path}: missing column(s) {', '.join(missing)}")

    def text(col: str) -> pd.Series:
        if col not in raw.columns:
            return pd.Series(pd.NA, index=raw.index, dtype="string")
        s = raw[col].astype("string")
        return s.mask(s.str.strip() == "")

    if "startTime" in raw.columns:
        start = _integer_field(raw["startTime"], path, "startTime")
    else:  # only millisecond precision is available
        start = _integer_field(raw["startTimeMillis"], path, "startTimeMillis") * 1000
    duration = _integer_field(raw["duration"], path, "duration")

    ours = "attributes" in raw.columns
    status, http, grpc = _status(raw, path, use_status_column=ours)
    if ours:  # the attributes column is authoritative
        attrs = text("attributes")
        for a in attrs.dropna().unique():
            try:
                ok = isinstance(json.loads(a), dict)
            except json.JSONDecodeError:
                ok = False
            if not ok:
                i = int(np.argmax((attrs == a).fillna(False).to_numpy()))
                raise FormatError(f"{path}: field 'attributes' row {i + 1} is not a JSON object")
        extra_cols = [c for c in raw.columns if c not in _TRACE_KNOWN | _TRACE_OURS]  # our extra columns
    else:  # RCAEval's own file: whatever has no field of ours goes into the attributes
        spare = [c for c in raw.columns if c not in _TRACE_KNOWN]
        attrs = _span_attributes(text("methodName"), grpc, raw[spare])
        extra_cols = []
    out = pd.DataFrame({
        "trace_id": text("traceID"),
        "span_id": text("spanID"),
        "parent_span_id": text("parentSpanID"),
        "service": text("serviceName"),
        "operation": text("operationName") if "operationName" in raw.columns else text("methodName"),
        "start_time_us": start,
        "duration_us": duration,
        "status": status,
        "http_status": http,
        "attributes": attrs,
    })
    for c in extra_cols:
        out[c] = text(c)
    return coerce(out, TRACE_COLUMNS, str(path))


def _read_text_table(path: Path, int_cols: tuple[str, ...]) -> pd.DataFrame:
    """Every column as text (ids stay ids, empty stays distinguishable), except the whole-number columns, which
    pandas' C parser reads fastest; ``_integer_field`` re-reads one as text if it did not come out as integers."""
    header = _header(path)
    return _read_csv(path, dtype={c: str for c in header if c not in int_cols}, keep_default_na=False)


def _integer_field(col: pd.Series, path: Path, name: str) -> pd.Series:
    """Whole numbers, exactly (ns timestamps exceed float precision); "150.0"-style floats are rounded."""
    if pd.api.types.is_integer_dtype(col):
        return col.astype("int64").reset_index(drop=True)
    text = _read_csv(path, usecols=[name], dtype=str, keep_default_na=False)[name].to_numpy(dtype=object)
    num = pd.to_numeric(text, errors="coerce")
    if pd.api.types.is_integer_dtype(num):
        return pd.Series(num, dtype="int64")
    f = np.asarray(num, dtype="float64")
    bad = ~np.isfinite(f)
    if bad.any():
        i = int(np.argmax(bad))
        raise FormatError(f"{path}: field {name!r} row {i + 1} is missing or not a number ({text[i]!r})")
    out = np.rint(f).astype("int64")
    for i, v in enumerate(text):  # integers written as such are taken digit for digit, not through a float
        v = v.strip()
        if v.lstrip("-").isdigit():
            out[i] = int(v)
    return pd.Series(out)


def _status(raw: pd.DataFrame, path: Path, *, use_status_column: bool) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(status OK/ERROR, HTTP status, gRPC code) per span, from ``statusCode``: empty → OK; 0 → OK and 1..99 →
    ERROR (gRPC codes); 100..599 → HTTP status, ERROR from 400 on; the words OK/UNSET/ERROR as such.
    The ``status`` column of a file we wrote overrides the derived status."""
    n = len(raw)
    codes = raw["statusCode"].astype(str).str.strip() if "statusCode" in raw.columns else pd.Series([""] * n)
    idx, uniq = pd.factorize(codes)  # few distinct codes: decide each once
    decided = [_status_of(str(v), path) for v in uniq]
    status = pd.Series(np.array([d[0] for d in decided], dtype=object)[idx], dtype="string")
    http = pd.Series(pd.array([d[1] for d in decided], dtype="Int64").take(idx))
    grpc = pd.Series(pd.array([d[2] for d in decided], dtype="Int64").take(idx))
    if use_status_column and "status" in raw.columns:
        given = raw["status"].astype(str).str.strip()
        unknown = sorted(set(given.unique()) - {"OK", "ERROR"})
        if unknown:
            raise FormatError(f"{path}: field 'status' has unknown value(s) {unknown} (expected OK or ERROR)")
        status = given.astype("string").reset_index(drop=True)
    return status, http, grpc


def _status_of(v: str, path: Path) -> tuple[str, int | None, int | None]:
    up = v.upper()
    if up in ("", "NAN", "UNSET", "STATUS_CODE_UNSET"):
        return "OK", None, None
    if up in ("OK", "STATUS_CODE_OK", "ERROR", "STATUS_CODE_ERROR"):
        return ("ERROR" if "ERROR" in up else "OK"), None, None
    try:
        f = float(v)
    except ValueError:
        f = math.nan
    if not (math.isfinite(f) and f == int(f) and 0 <= f <= 599):
        raise FormatError(f"{path}: field 'statusCode' has an unknown value {v!r}")
    code = int(f)
    if code >= 100:
        return ("ERROR" if code >= 400 else "OK"), code, None
    return ("ERROR" if code else "OK"), None, code


def _span_attributes(method: pd.Series, grpc: pd.Series, spare: pd.DataFrame) -> pd.Series:
    """JSON attributes of RCAEval spans: ``methodName``, the gRPC code as OTel's ``rpc.grpc.status_code``, and
    any column we have no field for (as text). Built once per distinct combination: spans repeat them."""
    parts = pd.DataFrame({"m": method.fillna("\x00").to_numpy(dtype=object),
                          "g": grpc.fillna(-1).to_numpy(dtype="int64")})
    for c in spare.columns:
        parts[c] = spare[c].to_numpy(dtype=object)
    idx, uniq = pd.factorize(pd.MultiIndex.from_frame(parts))
    cols = list(spare.columns)
    texts = []
    for m, g, *rest in uniq:
        a: dict[str, Any] = {}
        if m != "\x00":
            a["methodName"] = m
        if g >= 0:
            a["rpc.grpc.status_code"] = int(g)
        for k, v in zip(cols, rest):
            if v != "":
                a[k] = v
        texts.append(json.dumps(a, ensure_ascii=False) if a else None)
    return pd.Series(pd.array(texts, dtype="string").take(idx))


# logs.csv -----------------------------------------------------------------------------------------------------

# Mapped to our fields, or carried by them: "time" is a display string that "timestamp" carries exactly.
_LOG_MAPPED = {"time", "timestamp", "container_name", "message", "level", "log_template"}


def read_logs_csv(path: Path) -> pd.DataFrame:
    """RCAEval ``logs.csv`` → our log table (unix-s float time from the ns ``timestamp``); columns we have no
    field for (``cluster_id``, ``req_path``, ``error`` …) are kept as extra columns."""
    raw = _read_text_table(path, ("timestamp",))
    if raw.empty:
        return empty_logs()
    if "timestamp" not in raw.columns:
        raise FormatError(f"{path}: no 'timestamp' column (RCAEval logs give unix nanoseconds there)")

    def text(col: str) -> pd.Series:
        if col not in raw.columns:
            return pd.Series(pd.NA, index=raw.index, dtype="string")
        s = raw[col].astype("string")
        return s.mask(s == "")

    ns = _integer_field(raw["timestamp"], path, "timestamp")
    out = pd.DataFrame({
        "time": ns_to_seconds(ns.to_numpy()),
        "service": text("container_name"),
        "level": text("level"),
        "message": text("message"),
        "template": text("log_template"),
    })
    for c in raw.columns:
        if c not in _LOG_MAPPED and c not in out.columns:
            out[c] = text(c)
    return coerce(out, LOG_COLUMNS, str(path))


def seconds_to_ns(t: np.ndarray) -> np.ndarray:
    """Unix seconds (float) → integer ns, rounding to the nearest ns; exact inverse of ``ns_to_seconds`` for
    epoch-scale times (a float64 there is coarser than 1 ns)."""
    t = np.asarray(t, dtype="float64")
    whole = np.floor(t)
    return whole.astype("int64") * NS_PER_S + np.rint((t - whole) * 1e9).astype("int64")


def ns_to_seconds(ns: np.ndarray) -> np.ndarray:
    ns = np.asarray(ns, dtype="int64")
    whole = ns // NS_PER_S  # split so the big integer is never rounded before the division
    return whole.astype("float64") + (ns - whole * NS_PER_S) / 1e9


# ground truth and ids -------------------------------------------------------------------------------------


def case_id(case_dir: str | Path, root: str | Path | None = None) -> str:
    """The id ``read_case`` gives this folder, without reading its files."""
    return _truth_from_path(Path(case_dir), root)[0]


def _truth_from_path(case_dir: Path, root: str | Path | None) -> tuple[str, GroundTruth, str]:
    parent = case_dir.resolve().parent.name
    m = _FAULT_DIR.fullmatch(parent)
    if parent == NORMAL:
        truth = GroundTruth(service=None, fault_type=NORMAL)
    elif m:
        truth = GroundTruth(service=m.group(1), fault_type=m.group(2))
    else:
        truth = GroundTruth(service=None, fault_type=UNKNOWN)
    follows = parent == NORMAL or m is not None
    if root is not None:
        r = Path(root).resolve()
        try:
            rel = case_dir.resolve().relative_to(r)
        except ValueError:
            raise FormatError(f"{case_dir}: not inside the suite folder {root}") from None
        case_id = rel.as_posix() if rel.parts else case_dir.resolve().name
        above = [r.name, *rel.parts]
    else:
        case_id = f"{parent}/{case_dir.name}" if follows else case_dir.resolve().name
        above = [p.name for p in case_dir.resolve().parents][:4][::-1] + [case_dir.name]
    systems = [p for p in above if _SYSTEM_DIR.fullmatch(p)]
    return case_id, truth, systems[-1] if systems else "rcaeval"


# sidecar ----------------------------------------------------------------------------------------------------


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise FormatError(f"{path}: not an llmrca sidecar (field 'format' is not {SIDECAR_FORMAT!r})")
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise FormatError(f"{path}: format_version: must be an integer, is {version!r}")
    if version > SIDECAR_VERSION:
        raise FormatError(f"{path}: format_version {version} is newer than this llmrca reads")
    if not isinstance(meta.get("export") or {}, dict):
        raise FormatError(f"{path}: export: must be an object")
    return meta


def _apply_sidecar(
    meta: dict[str, Any], case_dir: Path, inject_time: float, truth: GroundTruth, system: str, rc: dict[str, Any]
) -> tuple[float, GroundTruth, str, Topology, float | None, dict[str, Any]]:
    """Restore what RCAEval's files cannot carry, as long as the files still agree with the sidecar."""
    where = case_dir / SIDECAR
    fields = read_fields(meta, where, fault_required=False)
    exact = fields.inject_time
    if exact is not None and math.floor(exact) == math.floor(inject_time):
        inject_time = exact
    elif exact is not None:
        rc["sidecar_conflict"] = f"inject_time {exact} vs {INJECT_TIME}; the file wins"
    side_truth = fields.truth
    if side_truth is not None and side_truth.service == truth.service:
        truth = side_truth
    elif side_truth is not None:
        rc["sidecar_conflict"] = f"fault service {side_truth.service!r} vs folder {truth.service!r}; folder wins"
    topology, interval, provenance = fields.topology, fields.interval, fields.provenance
    if "sidecar_conflict" in rc:
        warnings.warn(f"{where}: {rc['sidecar_conflict']}", RcaevalWarning, stacklevel=3)
    return inject_time, truth, fields.system or system, topology, interval, provenance


# ------------------------------------------------------------------------------------------------------ writing


def write_case(case: Case, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``case`` to ``out_dir/<service>_<fault>/<rep>/`` in RCAEval's layout; returns that folder.

    Files: ``data.csv``, ``metrics.csv``, ``simple_metrics.csv`` (the same metrics: RCAEval's runner reads
    data.csv, falling back to simple_metrics.csv; other RE2 readers read metrics.csv), ``logs.csv``, ``traces.csv``,
    ``logts.csv``, ``tracets_err.csv``, ``tracets_lat.csv`` (derived, 15 s windows), ``inject_time.txt`` (an
    integer: RCAEval parses it with ``int()``; the exact value is kept in ``llmrca.json``). Normal cases go to
    ``normal/<rep>/``. ``rep`` is the case id's trailing integer, else the next free number. Atomic: the folder
    is written under a temporary name and renamed into place.
    """
    check_case(case)
    obs = case.observation
    if obs.inject_time is None:
        raise CaseError([Problem("error", "inject_time", "RCAEval's layout needs an injection time")],
                        where=f"case {case.id!r}")
    if case.truth.is_multi:  # RCAEval's folder names carry one root cause
        warnings.warn(f"case {case.id!r} holds {len(case.truth.faults)} faults (roots "
                      f"{', '.join(case.truth.roots)}); RCAEval's layout names one root cause, so only the first "
                      f"({case.truth.fault_type} on {case.truth.service}) is written", RcaevalWarning, stacklevel=2)
    group, renamed_fault = _group_name(case)
    group_dir = Path(out_dir) / group
    rep = _repetition(case.id, group_dir)
    target = group_dir / rep
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists (pass overwrite=True to replace it)")
    with naming(target):
        return _write_folder(case, group_dir, target, rep, group, renamed_fault)


def planned_folder(case: Case, out_dir: str | Path) -> Path | None:
    """The folder ``write_case`` will write ``case`` to when its id ends in a repetition number (None otherwise:
    such a case takes the next free number, so it never lands on another's folder)."""
    if not re.search(r"(\d+)$", case.id):
        return None
    group, _ = _group_name(case)
    return Path(out_dir) / group / _repetition(case.id, Path(out_dir) / group)


def _write_folder(case: Case, group_dir: Path, target: Path, rep: str, group: str,
                  renamed_fault: str | None) -> Path:
    obs = case.observation
    group_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{rep}.", dir=group_dir))
    try:
        inject_int = math.floor(obs.inject_time)
        metrics_csv = _to_csv(obs.metrics)
        for name in (DATA, METRICS, SIMPLE_METRICS):
            (tmp / name).write_bytes(metrics_csv)
        traces = coerce(obs.traces if len(obs.traces) else empty_traces(), TRACE_COLUMNS, "traces")
        logs = coerce(obs.logs if len(obs.logs) else empty_logs(), LOG_COLUMNS, "logs")
        rc_traces = traces_to_rcaeval(traces)
        rc_logs = logs_to_rcaeval(logs)
        own_cluster_ids = "cluster_id" in logs.columns and logs["cluster_id"].notna().all()
        (tmp / TRACES).write_bytes(_to_csv(rc_traces))
        (tmp / LOGS).write_bytes(_to_csv(rc_logs))
        windows = _windows(obs.metrics, logs, traces)
        (tmp / LOGTS).write_bytes(_to_csv(derive_logts(rc_logs, windows)))
        err, lat = derive_tracets(rc_traces, windows)
        (tmp / TRACETS_ERR).write_bytes(_to_csv(err))
        (tmp / TRACETS_LAT).write_bytes(_to_csv(lat))
        (tmp / INJECT_TIME).write_text(f"{inject_int}\n", encoding="utf-8")
        sidecar = {
            **case_to_json(case),
            "format": SIDECAR_FORMAT,
            "format_version": SIDECAR_VERSION,
            "export": {
                "inject_time_txt": inject_int,
                "inject_time_rounding": "floor" if inject_int != obs.inject_time else "none",
                "folder": f"{group}/{rep}",
                **({"fault_type_in_folder": renamed_fault} if renamed_fault else {}),
                "derived_window_s": DERIVED_WINDOW_S,
                "log_cluster_id": "kept" if own_cluster_ids else "derived",
            },
        }
        with open(tmp / SIDECAR, "w", encoding="utf-8") as f:
            json.dump(sidecar, f, indent=2, allow_nan=False)
            f.write("\n")
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _group_name(case: Case) -> tuple[str, str | None]:
    """``<service>_<fault>`` (RCAEval splits it at its one '_'), ``normal`` or ``unknown``; the fault type is
    rewritten to ``[A-Za-z0-9.-]`` when needed (returned so it can be recorded)."""
    t = case.truth
    if t.service is None:
        return (NORMAL if t.fault_type == NORMAL else UNKNOWN), None
    if not _SAFE_NAME.fullmatch(t.service):
        raise CaseError([Problem("error", "fault.service", f"{t.service!r} cannot name an RCAEval folder "
                                                          "(use letters, digits, '.' and '-')")])
    fault = re.sub(r"[^A-Za-z0-9.-]+", "-", t.fault_type).strip("-") or UNKNOWN
    return f"{t.service}_{fault}", (fault if fault != t.fault_type else None)


def _repetition(case_id: str, group_dir: Path) -> str:
    m = re.search(r"(\d+)$", case_id)
    if m:
        return str(int(m.group(1)))
    used = {int(p.name) for p in group_dir.iterdir() if p.name.isdigit()} if group_dir.is_dir() else set()
    n = 1
    while n in used:
        n += 1
    return str(n)


def _replace_dir(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.replace(target, old / "case")  # move aside first so a failure never leaves no case at all
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old / "case", target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _to_csv(frame: pd.DataFrame) -> bytes:
    # pandas writes floats with repr (shortest round-tripping text), so metrics come back bit-identical.
    return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")


def _display_time(us: np.ndarray) -> np.ndarray:
    return np.datetime_as_string(np.asarray(us, dtype="int64").astype("datetime64[us]"), unit="us")


def traces_to_rcaeval(traces: pd.DataFrame) -> pd.DataFrame:
    """Our span table → RCAEval's ``traces.csv`` columns, plus ``status`` and ``attributes`` (ours, verbatim).

    ``statusCode`` is the HTTP status when there is one, else the gRPC code kept in the attributes
    (``rpc.grpc.status_code``), else 0 for OK and 2 (gRPC UNKNOWN) for ERROR.
    """
    n = len(traces)
    start = traces["start_time_us"].to_numpy(dtype="int64")
    keys = pd.MultiIndex.from_arrays([
        traces["attributes"].fillna("").to_numpy(dtype=object),
        traces["status"].fillna("").to_numpy(dtype=object),
        traces["http_status"].fillna(-1).to_numpy(dtype="int64"),
    ])
    idx, uniq = pd.factorize(keys)  # spans repeat a few combinations: decode each once
    methods: list[Any] = []
    codes: list[int] = []
    for a, st, h in uniq:
        attrs = json.loads(a) if a else {}
        m = attrs.get("methodName") if isinstance(attrs, dict) else None
        methods.append(m if isinstance(m, str) else None)
        g = attrs.get("rpc.grpc.status_code") if isinstance(attrs, dict) else None
        if h >= 0:
            codes.append(int(h))
        elif isinstance(g, int) and 0 <= g < 100:
            codes.append(g)
        else:
            codes.append(2 if st == "ERROR" else 0)
    method = pd.array(methods, dtype="string").take(idx) if n else pd.array([], dtype="string")
    code = np.asarray(codes, dtype="int64")[idx] if n else np.array([], dtype="int64")
    out = pd.DataFrame({
        "time": _display_time(start) if n else pd.Series(dtype="str"),
        "traceID": traces["trace_id"],
        "spanID": traces["span_id"],
        "serviceName": traces["service"],
        "methodName": method,
        "operationName": traces["operation"],
        "startTimeMillis": start // 1000,
        "startTime": start,
        "duration": traces["duration_us"].to_numpy(dtype="int64"),
        "statusCode": code,
        "parentSpanID": traces["parent_span_id"],
        "status": traces["status"],
        "attributes": traces["attributes"],
    })
    for c in traces.columns:
        if c not in TRACE_COLUMNS and c not in out.columns:
            out[c] = traces[c].to_numpy()
    return out


def logs_to_rcaeval(logs: pd.DataFrame) -> pd.DataFrame:
    """Our log table → RCAEval's ``logs.csv`` columns. ``cluster_id`` numbers the templates (1.. in sorted
    order; the message stands in for a missing template) unless the frame already has a ``cluster_id`` column."""
    ns = seconds_to_ns(logs["time"].to_numpy(dtype="float64"))
    template = logs["template"]
    if "cluster_id" in logs.columns and logs["cluster_id"].notna().all():
        cluster = logs["cluster_id"].astype("string")
    else:
        key = template.fillna(logs["message"]).fillna("")
        ids = {k: str(i + 1) for i, k in enumerate(sorted(set(key)))}
        cluster = key.map(ids).astype("string")
    out = pd.DataFrame({
        "time": _display_time(ns // 1000) if len(logs) else pd.Series(dtype="str"),
        "timestamp": ns,
        "container_name": logs["service"],
        "message": logs["message"],
        "level": logs["level"],
        "cluster_id": cluster,
        "log_template": template,
    })
    for c in logs.columns:
        if c not in LOG_COLUMNS and c not in out.columns:
            out[c] = logs[c].to_numpy()
    return out


def _windows(metrics: pd.DataFrame, logs: pd.DataFrame, traces: pd.DataFrame) -> np.ndarray:
    """Window starts (unix s, multiples of 15) covering every metric row, log line and span."""
    lo, hi = float(metrics[TIME].min()), float(metrics[TIME].max())
    if len(logs):
        lo, hi = min(lo, float(logs["time"].min())), max(hi, float(logs["time"].max()))
    if len(traces):
        s = traces["start_time_us"].to_numpy(dtype="int64")
        lo, hi = min(lo, s.min() / 1e6), max(hi, s.max() / 1e6)
    w = DERIVED_WINDOW_S
    return np.arange(math.floor(lo / w) * w, math.floor(hi / w) * w + w, w, dtype="int64")


def _window_of(seconds: np.ndarray) -> np.ndarray:
    return (np.floor(np.asarray(seconds, dtype="float64") / DERIVED_WINDOW_S) * DERIVED_WINDOW_S).astype("int64")


def _wide(values: pd.DataFrame, windows: np.ndarray, agg: str, fill: float | None) -> pd.DataFrame:
    """Long (window, key, value) rows → ``time`` + one column per key, one row per window."""
    if len(values):
        table = values.pivot_table(index="window", columns="key", values="value", aggfunc=agg, sort=True)
        table = table.reindex(windows)
    else:
        table = pd.DataFrame(index=windows)
    if fill is not None:
        table = table.fillna(fill).astype("int64")
    table.columns = [str(c) for c in table.columns]
    table.insert(0, TIME, windows)
    return table.reset_index(drop=True)


def derive_logts(rc_logs: pd.DataFrame, windows: np.ndarray) -> pd.DataFrame:
    """``logts.csv``: lines per ``<service>_<cluster_id>`` per 15 s window."""
    keep = rc_logs["container_name"].notna()
    long = pd.DataFrame({
        "window": _window_of(ns_to_seconds(rc_logs["timestamp"].to_numpy()[keep.to_numpy()])),
        "key": (rc_logs["container_name"][keep] + "_" + rc_logs["cluster_id"][keep].fillna("0")).to_numpy(),
        "value": 1,
    })
    return _wide(long, windows, "sum", 0)


def derive_tracets(rc_traces: pd.DataFrame, windows: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``tracets_err.csv`` (ERROR spans) and ``tracets_lat.csv`` (mean span duration, µs; empty where a window
    has no span) per ``<service>_<operation>`` per 15 s window; the operation is ``methodName`` when given, else
    ``operationName``, as RCAEval's trace methods name operations."""
    op = rc_traces["methodName"].fillna(rc_traces["operationName"]).fillna("unnamed")
    key = (rc_traces["serviceName"] + "_" + op).to_numpy()
    window = _window_of(rc_traces["startTime"].to_numpy(dtype="int64") / 1e6)
    err = pd.DataFrame({"window": window, "key": key, "value": (rc_traces["status"] == "ERROR").astype(int)})
    lat = pd.DataFrame({"window": window, "key": key, "value": rc_traces["duration"].astype("float64")})
    return _wide(err, windows, "sum", 0), _wide(lat, windows, "mean", None)
