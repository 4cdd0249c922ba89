"""What the user knows of their system and a case folder may not say: the SLI column and the call graph.

An RCAEval folder (``llmrca.io.rcaeval``) holds metrics, and in RE2/RE3 logs and traces, but no description of
the system: which service users call (whose latency is the SLI) and who calls whom. Without them the methods fall
back to what they can infer (``llmrca.methods.sli.find_entry``, ``llmrca.methods.call_graph.walk_graph``; the
fallbacks are listed in docs/methods.md, "What each method needs"). Where the user knows better:

    info = system_info(sli="frontend_latency-50", call_graph="ob-calls.csv")
    case = apply_system(load_case(path), info)      # what `llmrca rank --sli … --call-graph …` does

``--sli COLUMN`` sets the SLI column itself and makes its service the entry (``topology.sli``,
``topology.entry``). ``--call-graph FILE`` replaces the topology's caller → callee edges. The file is either

- CSV: one ``caller,callee`` pair per line; an optional header ``caller,callee``; blank lines and lines starting
  with ``#`` are skipped; or
- JSON (a ``.json`` name): a list of ``[caller, callee]`` pairs or of ``{"caller": …, "callee": …}`` objects, or
  an object whose ``edges`` is such a list.

Every error is one line naming the file and the line or field (``FormatError``), or the option and the case
(``LlmrcaError``) when a name is not in the case.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from llmrca.case import Case
from llmrca.errors import FormatError, LlmrcaError

SLI_OPTION = "--sli"
CALL_GRAPH_OPTION = "--call-graph"


@dataclass(frozen=True)
class SystemInfo:
    """The user's SLI column and/or call graph, applied to each case by :func:`apply_system`."""

    sli: str | None = None
    edges: tuple[tuple[str, str], ...] | None = None
    call_graph_file: str | None = None  # where ``edges`` came from (for messages and run.json)

    def to_dict(self) -> dict[str, Any]:
        """What a run records and hashes (a stored result is reused only under the same SLI and call graph)."""
        return {"sli": self.sli, "call_graph": None if self.edges is None else [list(e) for e in self.edges],
                "call_graph_file": self.call_graph_file}


def system_info(sli: str | None = None, call_graph: str | Path | None = None) -> SystemInfo | None:
    """The checked :class:`SystemInfo` of the options (None when neither is given)."""
    if sli is None and call_graph is None:
        return None
    if sli is not None:
        service, sep, metric = str(sli).partition("_")
        if not (sep and service.strip() and metric):
            raise LlmrcaError(f"{SLI_OPTION}: {sli!r} is not a metric column name ('<service>_<metric>', e.g. "
                              "frontend_latency)")
    edges = read_call_graph(call_graph) if call_graph is not None else None
    return SystemInfo(sli=sli, edges=edges, call_graph_file=str(call_graph) if call_graph is not None else None)


def read_call_graph(path: str | Path) -> tuple[tuple[str, str], ...]:
    """The caller → callee pairs of a call graph file (CSV, or JSON for a ``.json`` name), in file order,
    duplicates dropped; a ``FormatError`` naming the file and the line or field otherwise."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FormatError(f"{p}: call graph file missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"{p}: call graph file cannot be read ({e})") from None
    pairs = _json_edges(p, text) if p.suffix.lower() == ".json" else _csv_edges(p, text)
    if not pairs:
        raise FormatError(f"{p}: no caller,callee pair in the call graph file")
    return tuple(dict.fromkeys(pairs))


def _csv_edges(p: Path, text: str) -> list[tuple[str, str]]:
    out = []
    for n, row in enumerate(csv.reader(text.splitlines()), 1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if [c.lower() for c in cells] == ["caller", "callee"]:
            continue
        if len(cells) != 2:
            raise FormatError(f"{p}: line {n}: expected two fields 'caller,callee', got {len(cells)} ({row!r})")
        out.append(_edge(p, f"line {n}", cells[0], cells[1]))
    return out


def _json_edges(p: Path, text: str) -> list[tuple[str, str]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(f"{p}: invalid JSON ({e})") from None
    field = "edges"
    if isinstance(doc, dict):
        if "edges" not in doc:
            raise FormatError(f"{p}: field 'edges' missing (expected a list of [caller, callee] pairs)")
        doc = doc["edges"]
    if not isinstance(doc, list):
        raise FormatError(f"{p}: {field}: must be a list of [caller, callee] pairs, is {type(doc).__name__}")
    out = []
    for i, e in enumerate(doc):
        where = f"{field}[{i}]"
        if isinstance(e, dict) and set(e) >= {"caller", "callee"}:
            out.append(_edge(p, where, e["caller"], e["callee"]))
        elif isinstance(e, list) and len(e) == 2:
            out.append(_edge(p, where, e[0], e[1]))
        else:
            raise FormatError(f"{p}: {where}: must be [caller, callee] or {{\"caller\": …, \"callee\": …}}, is {e!r}")
    return out


def _edge(p: Path, where: str, a: Any, b: Any) -> tuple[str, str]:
    for end, v in (("caller", a), ("callee", b)):
        if not isinstance(v, str) or not v.strip():
            raise FormatError(f"{p}: {where}: {end} must be a service name, is {v!r}")
        if "_" in v:
            raise FormatError(f"{p}: {where}: {end} {v!r} is not a service name (service names have no '_'; "
                              "a column is '<service>_<metric>')")
    a, b = a.strip(), b.strip()
    if a == b:
        raise FormatError(f"{p}: {where}: {a!r} calls itself (a call graph's edges join two services)")
    return a, b


def apply_system(case: Case, info: SystemInfo | None, *, where: str | None = None) -> Case:
    """``case`` with the user's SLI and call graph in its topology (unchanged for ``info`` None).

    The SLI must be one of the case's metric columns (RCAEval's ``*_latency-90``, which the reader renames to
    ``*_latency``, is found under either name); every service of the call graph must be one the case knows.
    """
    if info is None:
        return case
    obs = case.observation
    topo = obs.topology
    at = where or f"case {case.id!r}"
    known = list(obs.services)
    if info.sli is not None:
        sli = info.sli
        renamed = (case.provenance or {}).get("renamed_columns") or {}
        if sli not in obs.metric_columns and renamed.get(sli) in obs.metric_columns:
            sli = renamed[sli]
        if sli not in obs.metric_columns:
            lat = [c for c in obs.metric_columns if "latency" in c or "duration" in c][:8]
            raise LlmrcaError(f"{SLI_OPTION}: no column {info.sli!r} in {at} (latency columns there: "
                              f"{', '.join(lat) or 'none'})")
        entry = sli.split("_", 1)[0]
        services = topo.services or tuple(known)
        topo = replace(topo, sli=sli, entry=entry, services=services if entry in services else (*services, entry))
    if info.edges is not None:
        names = set(known)
        missing = sorted({s for e in info.edges for s in e if s not in names})
        if missing:
            raise LlmrcaError(f"{CALL_GRAPH_OPTION} {info.call_graph_file}: service(s) {', '.join(map(repr, missing))} "
                              f"not in {at} (its services: {', '.join(known[:12])}{' …' if len(known) > 12 else ''})")
        # the services too, when the case named none: the topology's entry is then the one service nobody calls
        services = topo.services or tuple(known)
        services = (*services, *(s for s in dict.fromkeys(x for e in info.edges for x in e) if s not in services))
        topo = replace(topo, edges=info.edges, services=services)
    return replace(case, observation=replace(obs, topology=topo))
