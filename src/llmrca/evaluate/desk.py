"""The runner's side of the seal: it loads cases, keeps their ground truth, hashes inputs and builds rows.

Only this process (the runner's) reads a case's fault and id; workers get ``llmrca.evaluate.sealed`` blobs.

Content hash (``input_hash``): a stored row is reused only when nothing that made it has changed. It covers
every byte of the case folder (every file below it, by relative name, except hidden ones), the metric view, the
method's name, class and parameters, the seed and the llmrca version. The folder is hashed whole rather than
only the parts a method sees because a row also holds the rank against the case's ground truth: a fixed label
must be recomputed too. Hashing files (not the loaded case) keeps a resume of a finished grid fast.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llmrca
from llmrca.case import GroundTruth
from llmrca.errors import LlmrcaError
from llmrca.evaluate.sealed import SealedTask, one_line, seal, trace_text
from llmrca.methods.base import Ranking

_CHUNK = 1 << 20


def case_digest(path: str | Path) -> str:
    """SHA-256 of a case folder's files (relative names and bytes, sorted by name; hidden entries skipped)."""
    root = Path(path)
    h = hashlib.sha256()
    files: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith("."):
                full = Path(dirpath) / name
                files.append((full.relative_to(root).as_posix(), full))
    for rel, full in sorted(files):
        h.update(rel.encode() + b"\0")
        try:
            with open(full, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        except OSError as e:  # unreadable: the hash says so, and loading the case will report it
            h.update(f"\0unreadable:{e.errno}".encode())
        h.update(b"\0")
    return h.hexdigest()


def input_hash(digest: str, *, method: str, target: str, params: dict[str, Any], seed: int, view: str,
               system: dict[str, Any] | None = None) -> str:
    """The hash a stored row must carry to be reused (see the module docstring); ``system`` (the user's SLI and
    call graph, ``SystemInfo.to_dict()``) is part of it only when given, so rows made without one keep theirs."""
    what = {"case": digest, "method": method, "target": target, "params": params, "seed": int(seed),
            "view": view, "llmrca": llmrca.__version__, **({"system": system} if system is not None else {})}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=repr).encode()).hexdigest()


@dataclass
class GridTask:
    """One (method, case) of the grid, as the runner knows it (the worker gets only ``sealed``)."""

    method: str
    target: str  # "module:Class"
    family: str
    case_path: str
    case_id: str
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    memory_limit_mb: float | None = None
    input_hash: str | None = None

    @property
    def sealed(self) -> SealedTask:
        return SealedTask(self.target, dict(self.params), self.seed, self.memory_limit_mb)


@dataclass
class Prepared:
    """A case ready to hand out: the sealed blob (dropped when no task needs it) and what scoring needs."""

    token: str  # opaque: a counter, so it says nothing about the case
    info: dict[str, Any]  # fault_type, root_cause, indicator, n_candidates
    truth: GroundTruth | None
    columns: frozenset[str]
    blob: bytes | None = None
    handle: Any = None  # the executor's form of the blob (a Ray object ref), made once
    error: str | None = None  # the case did not load: the status of each of its rows
    trace: str | None = None


class CaseDesk:
    """Loads each case once when a task first needs it and keeps what its rows need."""

    def __init__(self, *, view: str, root: str | None, system: Any = None) -> None:
        self.view = view
        self.root = root
        self.system = system  # llmrca.io.system.SystemInfo: the user's SLI and call graph, or None
        self._cases: dict[str, Prepared] = {}

    def get(self, path: str) -> Prepared:
        p = self._cases.get(path)
        if p is None:
            p = self._cases[path] = self._prepare(path)
        return p

    def known(self, path: str) -> Prepared | None:
        return self._cases.get(path)

    def blob(self, path: str) -> bytes:
        """The sealed observation of a prepared case (loaded again if it was released meanwhile)."""
        p = self._cases[path]
        if p.blob is None:
            again = self._prepare(path, token=p.token)
            if again.blob is None:
                raise LlmrcaError(f"{path}: the case no longer loads ({again.error})")
            p.blob = again.blob
        return p.blob

    def release(self, keep: set[str]) -> None:
        """Drop the blobs of cases no task in ``keep`` (case paths) needs any more."""
        for path, p in self._cases.items():
            if path not in keep and p.blob is not None:
                p.blob, p.handle = None, None

    def _prepare(self, path: str, token: str | None = None) -> Prepared:
        from llmrca.io import load_case

        token = token or f"obs-{len(self._cases) + 1}"
        try:
            case = load_case(path, root=self.root)
            if self.view != "all":
                from llmrca.case.views import effective_view, select_view

                # a case of foreign data (RCAEval) has no views: it is given whole (llmrca.case.views)
                case = select_view(case, effective_view(case, self.view), where=path)
            if self.system is not None:
                from llmrca.io.system import apply_system

                case = apply_system(case, self.system, where=path)
            obs = case.observation
            blob = seal(obs)
        except Exception as e:  # noqa: BLE001 - any failure to load is reported in the case's rows
            return Prepared(token, {}, None, frozenset(), error=f"error: case not loaded: {one_line(e)}",
                            trace=trace_text(e))
        truth = case.truth
        info = {"fault_type": truth.fault_type, "fault_kind": truth.fault_kind, "root_cause": truth.service,
                "indicator": truth.indicator, "n_candidates": len(obs.services),
                "roots": json.dumps(list(truth.roots)) if truth.is_multi else None}
        return Prepared(token, info, truth, frozenset(obs.metric_columns), blob=blob)


def base_row(task: GridTask, prepared: Prepared | None) -> dict[str, Any]:
    row: dict[str, Any] = {"method": task.method, "family": task.family, "case_id": task.case_id,
                           "seed": task.seed, "case_path": task.case_path, "input_hash": task.input_hash}
    if prepared is not None:
        row.update(prepared.info)
    return row


def answered_row(task: GridTask, prepared: Prepared, answer: dict[str, Any]) -> dict[str, Any]:
    """The row of a task the worker answered: its status and times, and the truth's rank when ok."""
    from llmrca.evaluate.scores import rank_of_truth

    row = base_row(task, prepared)
    row.update(status=answer["status"], runtime_s=answer.get("runtime_s"), peak_mem_mb=answer.get("peak_mem_mb"))
    cands = answer.get("candidates")
    if row["status"] == "ok" and cands is not None and prepared.truth is not None:
        try:
            ranking = Ranking(tuple(cands), (0.0,) * len(cands))
        except ValueError as e:
            row["status"] = f"error: MethodError: {e}"
            return row
        tr = rank_of_truth(ranking, prepared.truth, prepared.columns)
        top = answer.get("top_score")
        row.update(rank=tr.rank, rank_fine=tr.rank_fine, fine_level=tr.fine_level,
                   top5=json.dumps(ranking.services()[:5]),
                   top_candidates=_top_candidates(cands, answer.get("top_scores")),
                   top_score=float("nan") if top is None else float(top), diagnosis=answer.get("diagnosis"),
                   rank_all=tr.rank_all)
    return row


def _top_candidates(candidates: list[str], scores: list[float | None] | None) -> str | None:
    """The first candidates with their scores, as a JSON list of [candidate, score] (a report's per-case
    page shows them); None when the answer carried no scores (a worker of an older version)."""
    if scores is None:
        return None
    return json.dumps([[c, s] for c, s in zip(candidates, scores, strict=False)])
