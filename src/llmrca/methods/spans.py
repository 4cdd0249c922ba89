"""Spans as the trace-based and multi-source methods read them: one vectorised table, split around the
injection.

- **Operation** of a span: ``<service>_<operation>`` (RCAEval's and MicroRank's naming); the service is the
  part before the first ``_``.
- **Invocation** (TraceRCA's unit, and the attribution PDiagnose's trace detector uses): the call a span
  measures, from a *caller* service to a *callee* service. A span is normally its own service's server-side
  view of a call, so the caller is the parent span's service (``""``, the outside client, for a root span) and
  the callee is the span's own service. An OpenTelemetry CLIENT span (``span.kind`` ``CLIENT`` in its
  attributes) that names its peer (``peer.service``) measures the call from its own service to that peer,
  network included, so there the caller is the span's service and the callee the peer. That is how a delay on
  the wire towards one replica is seen as an anomaly of the call *to that replica* rather than of the proxy
  that waits for it.
- **History and detection traces**: a trace that ended before ``inject_time`` is history (it teaches what
  normal is); a trace that ended at or after it is in the detection set (it may carry the fault), as RCAEval
  splits spans. ``window_s`` keeps only traces that started within that many seconds before (history) or after
  (detection) the injection; None keeps all.
- **SLO of an operation** (or invocation type): mean and standard deviation (ddof 1) of the durations of its
  history spans. The standard deviation is floored at 1 % of the mean plus 0.1 ms, so that a nearly constant
  history does not turn scheduling jitter into anomalies; a type with fewer than 2 history spans has no SLO
  and its spans are never latency-abnormal (an ERROR status still counts).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from llmrca.case import Observation
from llmrca.case.model import services_seen
from llmrca.errors import MethodError
from llmrca.methods.base import Ranking
from llmrca.methods.params import check_float

CLIENT = ""  # the caller of a root span: whoever sent the request, not a candidate
SLO_REL_FLOOR = 0.01
SLO_ABS_FLOOR_S = 1e-4
MIN_HISTORY = 2

_SPAN_COLUMNS = ("trace_id", "span_id", "parent_span_id", "service", "operation", "start_time_us",
                 "duration_us", "status")


def require_sources(method: str, obs: Observation, sources: Iterable[str]) -> None:
    """``MethodError`` naming every source in ``sources`` the observation lacks."""
    missing = [s for s in sources if not obs.has(s)]
    if len(missing) == 1:
        raise MethodError(f"{method} needs {missing[0]}: this case has none")
    if missing:
        raise MethodError(f"{method} needs {' and '.join(missing)}: this case has none of them")


def check_window_s(method: str, value: object) -> float | None:
    """The ``window_s`` parameter: None, or a positive number of seconds."""
    if value is None:
        return None
    return check_float(method, "window_s", value, low=0.0, high=float("inf"))


def require_inject_time(method: str, obs: Observation) -> float:
    if obs.inject_time is None:
        raise MethodError(f"{method} needs inject_time: the normal spans are those before it")
    return float(obs.inject_time)


@dataclass(frozen=True)
class Spans:
    """One row per span (arrays of equal length) and per-trace summaries.

    Names are held as integer codes into small tables (``names``, ``operations``), so that a method can compare
    and group spans without touching a Python string per span; ``service``, ``operation``, ``caller``,
    ``callee`` and ``trace_ids`` decode them on first use."""

    trace: np.ndarray  # int, index into trace_ids (traces first seen first)
    start: np.ndarray  # float, unix s
    duration: np.ndarray  # float, s
    error: np.ndarray  # bool, status ERROR
    parent: np.ndarray  # int, row of the parent span, -1 for roots
    names: np.ndarray  # object: the spans' services (first seen first), CLIENT, then peers that are no service
    n_services: int  # names[:n_services] are the spans' services
    client: int  # code of CLIENT ("" = the outside client) in names
    service_code: np.ndarray  # int, into names
    caller_code: np.ndarray  # int, into names
    callee_code: np.ndarray  # int, into names
    operations: np.ndarray  # object, "<service>_<operation>" per operation code
    op_code: np.ndarray  # int, into operations
    trace_start: np.ndarray  # float per trace
    trace_end: np.ndarray  # float per trace
    invocation: np.ndarray  # int, code of the span's (caller, callee, operation): its invocation type
    trace_dictionary: object  # the distinct trace ids in code order (Arrow array or object array)

    def __len__(self) -> int:
        return len(self.trace)

    @property
    def n_traces(self) -> int:
        return len(self.trace_dictionary)

    @property
    def services(self) -> list[str]:
        """The spans' distinct services, first seen first."""
        return self.names[: self.n_services].tolist()

    @cached_property
    def trace_ids(self) -> np.ndarray:  # object
        d = self.trace_dictionary
        return np.asarray(d.to_pylist() if isinstance(d, pa.Array) else d, dtype=object)

    @cached_property
    def service(self) -> np.ndarray:  # object
        return self.names[self.service_code]

    @cached_property
    def operation(self) -> np.ndarray:  # object, "<service>_<operation>"
        return self.operations[self.op_code]

    @cached_property
    def caller(self) -> np.ndarray:  # object, service ("" = outside client)
        return self.names[self.caller_code]

    @cached_property
    def callee(self) -> np.ndarray:  # object, service
        return self.names[self.callee_code]

    @cached_property
    def is_client(self) -> np.ndarray:
        """Per code of ``names``: whether it names the outside client."""
        return self.names == CLIENT

    def split(self, inject_time: float, window_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(history, detection) boolean masks over traces (see the module docs)."""
        hist = self.trace_end < inject_time
        det = ~hist
        if window_s is not None:
            hist &= self.trace_start >= inject_time - window_s
            det &= self.trace_start < inject_time + window_s
        return hist, det

    def has_child(self, span_mask: np.ndarray) -> np.ndarray:
        """Per span: whether one of its children is in ``span_mask``."""
        out = np.zeros(len(self), dtype=bool)
        kids = np.flatnonzero(span_mask & (self.parent >= 0))
        out[self.parent[kids]] = True
        return out


def load_spans(obs: Observation, method: str) -> Spans:
    """The observation's spans as :class:`Spans`; ``MethodError`` when it has none or they lack a column.

    Strings are factorised in their own storage and only distinct values become Python strings (operation
    names, attribute texts), so loading costs a few array passes over the spans."""
    tr = obs.traces
    if tr is None or not len(tr):
        raise MethodError(f"{method} needs traces: this case has none")
    missing = [c for c in _SPAN_COLUMNS if c not in tr.columns]
    if missing:
        raise MethodError(f"{method}: the traces lack column(s) {', '.join(missing)}")
    s_codes, svcs = text_codes(tr["service"])
    if (s_codes < 0).any():
        raise MethodError(f"{method}: {int((s_codes < 0).sum())} span(s) without a service name")
    o_codes, ops = text_codes(tr["operation"])
    ops = [*ops, "unnamed"]  # code -1 (no operation) -> the last entry
    pair, op_code = _unique_small(s_codes * len(ops) + np.where(o_codes < 0, len(ops) - 1, o_codes),
                                  len(svcs) * len(ops))
    operations = np.array([f"{svcs[p // len(ops)]}_{ops[p % len(ops)]}" for p in pair.tolist()], dtype=object)
    start = floats(tr["start_time_us"]) / 1e6
    duration = floats(tr["duration_us"]) / 1e6
    bad = ~(np.isfinite(start) & np.isfinite(duration))
    if bad.any():
        raise MethodError(f"{method}: span row {int(np.argmax(bad))} has no start time or duration")
    error = text_equals(tr["status"], "ERROR")
    # Traces are numbered as first seen: no consumer depends on their order (per-trace masks, counts, min/max)
    t_codes, t_dict = filled_text_codes(tr["trace_id"])
    parent = span_parent_rows(tr, t_codes)
    # names: services 0..len(svcs)-1, the client len(svcs), peers that are no service after it; a service
    # named "" is the client (as the names compare), so the codes compare as the names do
    names = [*svcs, CLIENT]
    client = svcs.index(CLIENT) if CLIENT in svcs else len(svcs)
    caller_code = np.where(parent >= 0, s_codes[np.maximum(parent, 0)], client)
    callee_code = s_codes.copy()
    if "attributes" in tr.columns:
        rows, peer, peers = _client_peers(tr["attributes"])
        if rows.size:
            caller_code[rows] = s_codes[rows]
            known = {v: i for i, v in enumerate(svcs)}
            for name in peers:  # each distinct peer once, in first-seen order
                if name not in known:
                    known[name] = len(names)
                    names.append(name)
            callee_code[rows] = np.array([known[name] for name in peers], dtype=np.int64)[peer]
    width = len(names)
    _, invocation = _unique_small((caller_code * width + callee_code) * len(pair) + op_code,
                                  width * width * len(pair))
    n_tr = len(t_dict)
    t_start = np.full(n_tr, np.inf)
    np.minimum.at(t_start, t_codes, start)
    t_end = np.full(n_tr, -np.inf)
    np.maximum.at(t_end, t_codes, start + duration)
    name_table = np.empty(len(names), dtype=object)
    name_table[:] = names
    return Spans(t_codes.astype(np.int64, copy=False), start, duration, error, parent, name_table, len(svcs),
                 client, s_codes, caller_code, callee_code, operations, op_code, t_start, t_end, invocation,
                 t_dict)


def span_parent_rows(tr: pd.DataFrame, trace_codes: np.ndarray) -> np.ndarray:
    """Row of each span's parent in the same trace, -1 for a root or a parent missing from the frame; a
    duplicated (trace, span id) resolves to its first row. What ``call_graph.span_parents`` computes, on integer
    codes: the first row of each parent id answers wherever it lies in the child's trace (span ids are nearly
    always unique), and only the rest are matched on sorted (trace, id) keys of span and parent ids factorised
    together."""
    n = len(tr)
    trace = trace_codes.astype(np.int64)
    sid, pid = _arrow(tr["span_id"]), _arrow(tr["parent_span_id"])
    arrow = sid is not None and pid is not None and sid.type == pid.type
    fixed = _fixed_width_parents(sid, pid) if arrow else None
    if fixed is not None:
        out, root = fixed
    elif arrow:
        # Arrow's index_in gives each parent id's first row among the span ids in one hash pass over them;
        # the codes are only needed for the rare ids that occur in several traces
        out = _no_null(pc.index_in(pid, value_set=sid.combine_chunks()), -1).to_numpy().astype(np.int64)
        # null or empty: Kleene OR of the two masks has no nulls left (cheaper than fill_null on booleans)
        root = pc.or_kleene(pc.is_null(pid), pc.equal(pid, "")).to_numpy(zero_copy_only=False)
    else:
        sid = tr["span_id"].astype("string").fillna("")
        pid = tr["parent_span_id"].astype("string").fillna("")
        codes = pd.factorize(pd.concat([sid, pid], ignore_index=True))[0]
        root = (pid == "").to_numpy(dtype=bool)
        out = _first_rows(codes, n)
    other = np.flatnonzero((out >= 0) & (trace[np.maximum(out, 0)] != trace))
    if other.size:  # an id that occurs in several traces: match (trace, id)
        if arrow:
            sid, pid = _no_null(sid, ""), _no_null(pid, "")
            codes = pa.chunked_array(sid.chunks + pid.chunks, type=sid.type).dictionary_encode() \
                .combine_chunks().indices.to_numpy()
        s_code, p_code = codes[:n].astype(np.int64), codes[n:].astype(np.int64)
        width = int(codes.max()) + 1
        own = trace * width + s_code
        keys, first = np.unique(own, return_index=True)
        want = trace[other] * width + p_code[other]
        at = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
        out[other] = np.where(keys[at] == want, first[at], -1)
    out[root] = -1
    return out


_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplying by it is a bijection of the 64-bit words


def _packed_ids(arr) -> tuple[np.ndarray, np.ndarray] | None:
    """For an Arrow string array whose non-empty values all have one byte length that is a multiple of 8 (the hex
    ids of OpenTelemetry: 16-character span ids): (words, filled), ``words`` (k, length / 8) uint64 holding the k
    filled values' bytes in row order (a view of the array's data buffer), ``filled`` per row: neither null nor
    empty. None for any other array, or one whose null slots hold bytes."""
    a = arr.chunk(0) if isinstance(arr, pa.ChunkedArray) and arr.num_chunks == 1 else arr
    if isinstance(a, pa.ChunkedArray) or not len(a) or a.offset:
        return None
    n = len(a)
    valid_buf, off_buf, data_buf = a.buffers()
    off = np.frombuffer(off_buf, dtype=np.int64 if pa.types.is_large_string(a.type) else np.int32, count=n + 1)
    length = np.diff(off)
    filled = length > 0
    if a.null_count:
        filled &= np.unpackbits(np.frombuffer(valid_buf, dtype=np.uint8), count=n, bitorder="little").view(bool)
    k = int(np.count_nonzero(filled))
    width = int(length[np.argmax(filled)]) if k else 0
    if not width or width % 8 or (length[filled] != width).any() or int(off[-1] - off[0]) != k * width:
        return None  # not one width, or bytes behind a null slot
    return np.frombuffer(data_buf, dtype=np.uint8)[off[0]:off[-1]].view(np.uint64).reshape(k, width // 8), filled


def _keys(words: np.ndarray) -> np.ndarray:
    """One uint64 per row of ``words``, mixing all its words: equal rows give equal keys."""
    key = words[:, 0].copy()
    for j in range(1, words.shape[1]):
        key *= _MIX
        key ^= words[:, j]
    return key


def _fixed_width_parents(sid, pid) -> tuple[np.ndarray, np.ndarray] | None:
    """The first step of ``span_parent_rows`` (each parent id's first row among the span ids, -1 where none;
    the roots: parent null or empty) for ids of one width, matched by 64-bit keys of their bytes instead of
    their texts (Arrow hashes integers more than twice as fast as short strings). A key's first row is the
    parent's first row exactly where all the words agree: an earlier row with the parent's id would have the
    same key.
    Where they do not (two ids with one key), the id is looked up by its text. None where the ids are not all
    of one width; the caller then looks up every text."""
    s, p = _packed_ids(sid), _packed_ids(pid)
    if s is None or p is None or s[0].shape[1] != p[0].shape[1] or not s[1].all():
        return None
    s_words, (p_words, filled) = s[0], p
    root = ~filled
    found = _no_null(pc.index_in(pa.array(_keys(p_words)), value_set=pa.array(_keys(s_words))), -1) \
        .to_numpy().astype(np.int64)  # per filled parent
    hit = np.flatnonzero(found >= 0)
    at = found[hit]
    # equal keys and equal words 0..k-2 imply an equal last word (the key is a bijection of it given the
    # others), so the last word needs no comparison
    wrong = np.zeros(len(hit), dtype=bool)
    for j in range(s_words.shape[1] - 1):
        wrong |= s_words[:, j].take(at) != p_words[:, j].take(hit)
    rows = np.flatnonzero(filled)
    if wrong.any():  # another id with the same key: this parent's own id by its text
        bad = hit[wrong]
        sa = sid.chunk(0) if isinstance(sid, pa.ChunkedArray) else sid
        by_text = pc.index_in(pc.take(pid, pa.array(rows[bad])), value_set=sa)
        found[bad] = _no_null(by_text, -1).to_numpy().astype(np.int64)
    out = np.full(len(filled), -1, dtype=np.int64)
    out[rows] = found
    return out, root


def _first_rows(codes: np.ndarray, n: int) -> np.ndarray:
    """Per parent (codes[n:]): the first row whose span id (codes[:n]) has its code, -1 where none."""
    s_code, p_code = codes[:n].astype(np.int64), codes[n:].astype(np.int64)
    first_row = np.full(int(codes.max()) + 1, -1, dtype=np.int64)
    first_row[s_code[::-1]] = np.arange(n - 1, -1, -1)  # the last write, i.e. the first row, wins
    return first_row[p_code]


def _client_peers(attributes: pd.Series) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The CLIENT spans whose attributes name a ``peer.service``: (rows, code of each row's peer, the distinct
    peers, first seen first). Only texts that contain ``peer.service`` literally count. Arrow-backed texts are
    screened first for ``vice`` (a part of it) with a regular expression: Arrow runs it with RE2, several times
    faster on long texts than its plain substring search, and ``vice`` faster than the whole name (fewer
    false starts on the first letter); the few distinct texts among those rows are then checked for
    ``peer.service`` and parsed once each."""
    arr = _arrow(attributes)
    if arr is not None:
        near = _no_null(pc.match_substring_regex(arr, "vice"), False)
        rows = np.flatnonzero(near.to_numpy())
        if not rows.size:
            return rows, rows, []
        # the distinct texts only become Python strings; each row takes its text's peer by the text's code
        enc = pc.dictionary_encode(arr.filter(near)).combine_chunks()
        texts = enc.dictionary.to_pylist()
        of_row = enc.indices.to_numpy(zero_copy_only=False)
    else:
        text = attributes.astype("string")
        rows = np.flatnonzero(text.str.contains("peer.service", regex=False).fillna(False).to_numpy(dtype=bool))
        codes, uniq = pd.factorize(pd.Series(text.to_numpy(dtype=object)[rows], dtype=object))
        texts, of_row = list(uniq), codes
    # the second screen, per distinct text: only a text that says peer.service literally names a peer
    peer_of_text = [_client_peer(v) if "peer.service" in v else None for v in texts]
    peers = list(dict.fromkeys(p for p in peer_of_text if p is not None))  # texts are in first-seen order
    code = {p: i for i, p in enumerate(peers)}
    code_of_text = np.array([code.get(p, -1) for p in peer_of_text], dtype=np.int64)
    peer = code_of_text[of_row]
    named = peer >= 0
    return rows[named], peer[named], peers


def floats(col: pd.Series) -> np.ndarray:
    """``pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)``; a column of NumPy numbers is converted
    directly (``to_numeric`` hands it back as it is)."""
    if isinstance(col.dtype, np.dtype) and col.dtype.kind in "iuf":
        return col.to_numpy(dtype=float)
    return pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)


def has_missing(col: pd.Series) -> bool:
    """``col.isna().any()``, read off the Arrow array's null count where the column is one."""
    arr = _arrow(col)
    return bool(arr.null_count) if arr is not None else bool(col.isna().any())


def _no_null(arr, value):
    """``pc.fill_null(arr, value)``, skipped where there is nothing to fill."""
    return pc.fill_null(arr, value) if arr.null_count else arr


def _arrow(col: pd.Series):
    """The column's Arrow string array when it is stored as one (pandas' ``string[pyarrow]``), else None: the
    hot paths below then call Arrow's kernels directly instead of pandas' wrappers around them."""
    arr = getattr(col.array, "_pa_array", None)
    if arr is None or not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return None
    return arr


def text_equals(col: pd.Series, value: str) -> np.ndarray:
    """Per row: the text equals ``value`` (missing: False)."""
    arr = _arrow(col)
    if arr is not None:
        return _no_null(pc.equal(arr, value), False).to_numpy()
    return (col.astype("string") == value).fillna(False).to_numpy(dtype=bool)


def text_codes(col: pd.Series) -> tuple[np.ndarray, list[str]]:
    """``pd.factorize(col)`` for a text column: (codes in first-seen order, -1 where missing; the distinct
    texts)."""
    arr = _arrow(col)
    if arr is None:
        codes, uniq = pd.factorize(col)
        return codes, [str(v) for v in uniq]
    enc = pc.dictionary_encode(arr).combine_chunks()
    idx = enc.indices
    codes = idx.to_numpy(zero_copy_only=False) if idx.null_count == 0 else \
        pc.fill_null(idx, -1).to_numpy()
    return codes.astype(np.int64, copy=False), enc.dictionary.to_pylist()


def sorted_text_codes(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``pd.factorize(col as text, missing = "", sort=True)``: (codes, sorted distinct texts as objects)."""
    arr = _arrow(col)
    if arr is None:
        codes, uniq = pd.factorize(col.astype("string").fillna(""), sort=True)
        return codes, np.asarray(uniq, dtype=object)
    enc = pc.dictionary_encode(_no_null(arr, "")).combine_chunks()
    order = pc.array_sort_indices(enc.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[enc.indices.to_numpy()], np.asarray(enc.dictionary.take(order).to_pylist(), dtype=object)


def filled_text_codes(col: pd.Series) -> tuple[np.ndarray, object]:
    """``pd.factorize(col as text, missing = "")``: (codes in first-seen order, the distinct texts: an Arrow
    array where the column is stored as one, for a caller that mostly needs only how many there are; else an
    object array)."""
    arr = _arrow(col)
    if arr is None:
        codes, uniq = pd.factorize(col.astype("string").fillna(""))
        return codes.astype(np.int64, copy=False), np.asarray(uniq, dtype=object)
    enc = pc.dictionary_encode(_no_null(arr, "")).combine_chunks()
    return enc.indices.to_numpy().astype(np.int64, copy=False), enc.dictionary


def _unique_small(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(codes, return_inverse=True)`` for non-negative codes below ``size``, by counting (no sort)
    where ``size`` is small next to the data."""
    if size > 4 * len(codes) + (1 << 20):
        uniq, inverse = np.unique(codes, return_inverse=True)
        return uniq, inverse.ravel()
    present = np.bincount(codes, minlength=size) > 0
    return np.flatnonzero(present), (np.cumsum(present) - 1)[codes]


def _client_peer(value: object) -> str | None:
    """The ``peer.service`` of a CLIENT span's JSON attributes, None when they name none (or are not JSON)."""
    try:
        a = json.loads(str(value))
    except (TypeError, ValueError):
        return None  # attributes that are not JSON say nothing about the peer
    if not isinstance(a, dict) or str(a.get("span.kind", "")).upper() != "CLIENT":
        return None
    peer = a.get("peer.service")
    return peer if isinstance(peer, str) and peer and "_" not in peer else None


def group_slo(codes: np.ndarray, durations: np.ndarray, history: np.ndarray, n: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per code 0..n-1: (count, mean, floored std) of ``durations`` where ``history``; mean/std NaN below
    ``MIN_HISTORY`` spans."""
    c = codes[history]
    d = durations[history]
    count = np.bincount(c, minlength=n).astype(float)
    total = np.bincount(c, weights=d, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        sq = np.bincount(c, weights=(d - mean[c]) ** 2, minlength=n)
        std = np.sqrt(sq / (count - 1))
    ok = count >= MIN_HISTORY
    mean = np.where(ok, mean, np.nan)
    std = np.where(ok, np.maximum(std, SLO_REL_FLOOR * np.abs(mean) + SLO_ABS_FLOOR_S), np.nan)
    return count, mean, std


def trace_any(spans: Spans, span_mask: np.ndarray) -> np.ndarray:
    """Per trace: whether any of its spans is in ``span_mask``."""
    out = np.zeros(spans.n_traces, dtype=bool)
    out[spans.trace[span_mask]] = True
    return out


def case_services(obs: Observation, spans: Spans) -> set[str]:
    """``obs.services`` as a set, the traces' services taken from ``spans`` (already decoded) instead of a second
    pass over the frame's service column."""
    return set(services_seen(obs.metric_columns, dict.fromkeys(spans.services), obs.topology.services))


def full_ranking(scores: Mapping[str, float], services: Iterable[str]) -> Ranking:
    """Scored candidates by score (descending, ties by name), then every service without a candidate, by name,
    with score 0: a full ranking in which nothing is left to chance."""
    items = [(str(c), float(v) if np.isfinite(v) else 0.0) for c, v in scores.items()]
    items.sort(key=lambda cv: (-cv[1], cv[0]))
    seen = {c.split("_", 1)[0] for c, _ in items}
    rest = sorted({str(s) for s in services} - seen)
    return Ranking(tuple([c for c, _ in items] + rest), tuple([v for _, v in items] + [0.0] * len(rest)))
