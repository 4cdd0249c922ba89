"""The grid runner: every method on every case, each task in a sealed worker, each result stored at once.

Isolation: a task runs in a long-lived worker (a local process, ``llmrca.evaluate.worker``, or a Ray actor,
``llmrca.evaluate.ray_pool``) that holds the observation only: this process loads each case, keeps its ground
truth and scores the worker's answer (``llmrca.evaluate.sealed``, ``llmrca.evaluate.desk``). The scheduler
(``llmrca.evaluate.pool``) enforces the per-task timeout, kills a worker's whole process tree and starts a
fresh worker, and turns every failure into a row: an exception → ``error: <Type>: <message>``; an abstention
(``llmrca.errors.NoAnswer``) → ``no-answer: <reason>``; a ``MemoryError`` under the memory cap → ``error:
MemoryError …``; a worker killed by a signal (segfault, OOM killer) → ``error: worker died (signal …)``; no
answer in time → ``timeout``. The grid always goes on.

Resume: rows are journaled as they arrive (see ``llmrca.evaluate.store``). Running the same grid into the same
folder again skips every (method, case_id, seed) already stored whose content hash (``input_hash``: the case's
files, the view, the method and its parameters, the seed, the llmrca version) still matches — ``ok``,
``no-answer``, ``error`` and ``timeout`` rows alike, since a failure is a result and a method that timed out
once will time out again; ``retry_failed=True`` runs the failed ones again. A stored row whose hash differs (a
regenerated case, other parameters) is recomputed and counted as replaced; the new row replaces the old.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import pandas as pd

import llmrca
from llmrca import options
from llmrca.errors import CaseError, FormatError, LlmrcaError, UnknownNameError
from llmrca.evaluate.desk import CaseDesk, GridTask, case_digest, input_hash
from llmrca.evaluate.pool import LocalExecutor, run_grid
from llmrca.evaluate.store import KEY, RUN_JSON, ResultStore, rows_to_frame, write_atomic
from llmrca.io.system import SystemInfo
from llmrca.methods.params import checked_params
from llmrca.methods.registry import entry, resolve
from llmrca.report.status import KINDS, status_kind

CHECKPOINT_EVERY_S = 30.0
def default_memory_limit_mb(jobs: int) -> float:
    """Three quarters of the memory available now, shared among the workers, at least 1 GiB each."""
    import psutil

    avail_mb = psutil.virtual_memory().available / 2**20
    return max(1024.0, 0.75 * avail_mb / max(1, jobs))


def evaluate(
    cases: Sequence[str | Path],
    methods: Sequence[str] | str,
    out_dir: str | Path,
    *,
    jobs: int = 1,
    timeout: float | None = 600.0,
    memory_limit_mb: float | None = None,
    seed: int = 0,
    progress: bool = True,
    method_params: dict[str, dict[str, Any]] | None = None,
    retry_failed: bool = False,
    root: str | Path | None = None,
    view: str = "all",
    executor: str = "local",
    ray_address: str | None = None,
    system: SystemInfo | None = None,
) -> pd.DataFrame:
    """Run ``methods`` × ``cases`` into ``out_dir`` and return the grid's rows (one per method and case).

    ``cases``: case folders (any format ``llmrca.io.load_case`` reads; ``root`` names RCAEval cases).
    ``methods``: registry names, or a spec ``resolve`` accepts ('all', 'metric', 'a,b').
    ``jobs``: workers (processes, or Ray actors). With more than one local worker, BLAS/OpenMP threads per
    worker are set to ``cpu_count // jobs`` unless the environment already sets them.
    ``timeout``: seconds per task for ``rank``; None = no limit.
    ``memory_limit_mb``: address space a method may add during ``rank`` (see ``llmrca.evaluate.sealed``);
    None = ``default_memory_limit_mb(jobs)`` (on Ray: the cluster's memory resource shared by the actors),
    0 = no cap.
    ``method_params``: method (a name or ``module:Class``) → keyword parameters for its constructor, checked
    before the run against the parameters the method declares (``llmrca.methods.params.checked_params``).
    ``retry_failed``: on resume, run again the tasks whose stored status is not ``ok``.
    ``view``: which metric columns methods see ('all', 'study' or 'full'; see ``llmrca.case.views``). A result
    folder holds one view: resuming it with another is refused.
    ``executor``: 'local' (worker processes here) or 'ray' (actors on a Ray cluster: ``ray_address``, or a
    local Ray started for the run; needs the ``ray`` extra). Both give the same rows.
    ``system``: the user's SLI column and call graph (``llmrca.io.system.system_info``), applied to every case's
    topology; part of each row's content hash.
    Rows already in ``out_dir`` for the same (method, case_id, seed) and content hash are not recomputed.
    """
    names = resolve(list(methods) if not isinstance(methods, str) else methods)
    params = checked_params(method_params, names)
    options.jobs(jobs, "jobs")
    options.seconds(timeout, "timeout", allow_none=True)
    options.memory_mb(memory_limit_mb, "memory_limit_mb")
    options.executor(executor, ray_address, "executor")
    seed = int(seed)
    from llmrca.case.views import VIEWS

    if view not in VIEWS:
        raise UnknownNameError(f"unknown view {view!r}; known: {', '.join(VIEWS)}")
    paths = _case_paths(cases)
    entries = {n: entry(n) for n in names}
    out = Path(out_dir)
    _refuse_case_as_out(out)
    _check_same_view(out, view)
    pool = _executor(executor, jobs, ray_address)  # before the store: a Ray that cannot start writes nothing
    try:
        if memory_limit_mb is None:
            memory_limit_mb = pool.default_memory_limit_mb(jobs) if executor == "ray" else (
                default_memory_limit_mb(jobs))
        if executor == "ray":
            pool.reserve_memory(memory_limit_mb)  # type: ignore[attr-defined]
        return _evaluate(paths, names, entries, out, pool, jobs=jobs, timeout=timeout,
                         memory_limit_mb=memory_limit_mb, seed=seed, progress=progress, params=params,
                         retry_failed=retry_failed, root=root, view=view, executor=executor,
                         ray_address=ray_address, system=system)
    finally:
        pool.close()


def _executor(name: str, jobs: int, address: str | None) -> Any:
    if name == "local":
        return LocalExecutor(jobs)
    from llmrca.evaluate.ray_pool import RayExecutor

    return RayExecutor(jobs, address=address)


def _evaluate(paths: list[str], names: list[str], entries: dict[str, Any], out: Path, pool: Any, *, jobs: int,
              timeout: float | None, memory_limit_mb: float, seed: int, progress: bool,
              params: dict[str, dict[str, Any]], retry_failed: bool, root: str | Path | None, view: str,
              executor: str, ray_address: str | None, system: SystemInfo | None = None) -> pd.DataFrame:
    root_s = str(root) if root is not None else None
    # A plug-in changes with its file, not with llmrca's version: its source's hash is part of its rows' key, so an
    # edited method is recomputed rather than its old rows reused.
    from llmrca.methods.plugins import code_digest

    code_keys = {n: e.target if e.origin == "built-in" else f"{e.target}#{code_digest(e.target)}"
                 for n, e in entries.items()}
    with ResultStore(out) as store:
        ids = _case_ids(paths, store.case_ids_by_path(), root)
        digests = {p: case_digest(p) for p in paths}
        grid: list[GridTask] = []
        resumed = replaced = 0
        for p in paths:
            cid = ids.get(p) or Path(p).name
            for n in names:
                e = entries[n]
                h = input_hash(digests[p], method=n, target=code_keys[n], params=params.get(n, {}), seed=seed,
                               view=view, system=None if system is None else system.to_dict())
                old = store.get((n, cid, seed))
                if old is not None and old.get("input_hash") == h and (old["status"] == "ok" or not retry_failed):
                    resumed += 1
                    continue
                if old is not None and old.get("input_hash") != h:
                    replaced += 1
                grid.append(GridTask(method=n, target=e.target, family=e.family, case_path=p, case_id=cid,
                                     seed=seed, params=dict(params.get(n, {})),
                                     memory_limit_mb=memory_limit_mb or None, input_hash=h))
        settings = {"jobs": jobs, "timeout": timeout, "memory_limit_mb": memory_limit_mb, "seed": seed,
                    "method_params": params, "retry_failed": retry_failed, "view": view, "root": root_s,
                    "executor": executor, "ray_address": ray_address,
                    **({"system": system.to_dict()} if system is not None else {})}
        run_info = _run_info(out, names, paths, settings)
        run_info["tasks"] = {"grid": len(paths) * len(names), "resumed": resumed, "replaced": replaced,
                             "to_run": len(grid)}
        write_atomic(out / RUN_JSON, _json_bytes(run_info))

        counts = dict.fromkeys(KINDS, 0)
        bar = _Progress(len(grid), resumed, replaced, enabled=progress)
        last_checkpoint = time.monotonic()

        def on_row(row: dict[str, Any], trace: str | None) -> None:
            nonlocal last_checkpoint
            row = store.append(row)
            counts[status_kind(row["status"])] += 1
            if trace:
                store.log_error(tuple(row[k] for k in KEY), trace)  # type: ignore[arg-type]
            bar.advance(counts)
            if time.monotonic() - last_checkpoint > CHECKPOINT_EVERY_S:
                store.checkpoint()
                last_checkpoint = time.monotonic()

        status, reason = "failed", None
        try:
            with bar:
                run_grid(_by_case(grid), pool, jobs=jobs, timeout=timeout, desk=CaseDesk(view=view, root=root_s, system=system),
                         on_row=on_row)
            status = "finished"
        except KeyboardInterrupt:
            status, reason = "interrupted", "KeyboardInterrupt"
            raise
        except BaseException as e:
            reason = f"{type(e).__name__}: {e}"
            raise
        finally:
            run_info.update(finished=_now(), status=status, counts=counts)
            if reason:
                run_info["error"] = reason
            _write_run_json(out / RUN_JSON, run_info, failing=status != "finished")
        rows = [store.get((n, ids.get(p) or Path(p).name, seed)) for p in paths for n in names]
        return rows_to_frame(r for r in rows if r is not None)


# --------------------------------------------------------------------------------------------- grid set-up


def _check_same_view(out: Path, view: str) -> None:
    try:
        old = json.loads((out / RUN_JSON).read_text(encoding="utf-8")).get("params", {}).get("view", "all")
    except (OSError, ValueError, AttributeError):
        return
    if old != view:
        raise LlmrcaError(f"{out}: holds results for view {old!r}; use another --out for view {view!r}")


def _case_paths(cases: Sequence[str | Path]) -> list[str]:
    if isinstance(cases, (str, Path)):
        raise TypeError("cases must be a list of case folders (use llmrca.io.find_cases on a suite folder)")
    out: dict[str, None] = {}
    for c in cases:
        p = os.path.abspath(c)
        if not os.path.isdir(p):
            raise FormatError(f"{c}: no such case folder")
        _refuse_suite(c)
        out[p] = None
    return list(out)


def _refuse_suite(path: str | Path) -> None:
    """A folder that is no case but holds cases is a suite given where a case belongs: say so, rather than
    store an error row for it ("not a case folder") and leave its cases out."""
    from llmrca.io import case_format, find_cases

    if case_format(path) is not None:
        return
    inside = find_cases(path)
    if inside:
        raise FormatError(f"{path}: a suite folder ({len(inside)} case folder(s) below it), not a case folder; "
                          f"pass its cases: llmrca.find_cases({str(path)!r})")


def _refuse_case_as_out(out: Path) -> None:
    """Results written into a case or suite folder would become part of it (its content hash, its listing)."""
    from llmrca.io import case_format
    from llmrca.sim.suites import MANIFEST

    if case_format(out) is not None:
        raise FormatError(f"{out}: a case folder; write the results elsewhere")
    if (out / MANIFEST).is_file():
        raise FormatError(f"{out}: a suite folder (it has {MANIFEST}); write the results elsewhere")


def _peek_id(path: str, root: str | Path | None = None) -> str | None:
    """A case's id without loading it: native from case.json alone, RCAEval from its path; None otherwise."""
    from llmrca.io import native, rcaeval

    meta_path = Path(path) / native.CASE_JSON
    if not meta_path.is_file():
        return rcaeval.case_id(path, root) if rcaeval.is_rcaeval_dir(Path(path)) else None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the worker will report the broken file in the task's row
    return str((meta.get("id") if isinstance(meta, dict) else None) or Path(path).name)


def _case_ids(paths: list[str], known: dict[str, str], root: str | Path | None) -> dict[str, str | None]:
    # case.json first (it may have been regenerated since); stored rows name the cases of other formats
    ids = {p: _peek_id(p, root) or known.get(p) for p in paths}
    seen: dict[str, str] = {}
    for p, cid in ids.items():
        if cid is None:
            continue
        if cid in seen:
            raise CaseError([f"case id {cid!r} is used by two case folders: {seen[cid]} and {p}"])
        seen[cid] = p
    return ids


def _by_case(tasks: list[GridTask]) -> list[list[GridTask]]:
    groups: dict[str, list[GridTask]] = {}
    for t in tasks:
        groups.setdefault(t.case_path, []).append(t)
    return list(groups.values())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_run_json(path: Path, info: dict[str, Any], *, failing: bool) -> None:
    """Record the run's end. On a full disk the atomic rewrite fails (it needs a new file), so the old file is
    overwritten in place with the compact form, which fits in the bytes the "running" version already holds:
    a run that stopped never stays marked "running". Only when even that fails does the error go up (and not
    while another error is already on its way up)."""
    try:
        write_atomic(path, _json_bytes(info))
        return
    except OSError:
        if not failing:
            raise
    compact = {k: v for k, v in info.items() if k != "previous"}
    for data in (json.dumps(compact, separators=(",", ":"), default=str).encode(),
                 json.dumps({**compact, "cases": len(info.get("cases", []))}, separators=(",", ":"),
                            default=str).encode()):
        try:
            with open(path, "r+b") as f:
                if len(data) > os.fstat(f.fileno()).st_size:
                    continue
                f.write(data)
                f.truncate()
            return
        except OSError:
            return


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, default=str) + "\n").encode()


def _run_info(out: Path, names: list[str], paths: list[str], params: dict[str, Any]) -> dict[str, Any]:
    previous: list[dict[str, Any]] = []
    try:
        old = json.loads((out / RUN_JSON).read_text(encoding="utf-8"))
        previous = list(old.get("previous", [])) + [
            {k: old.get(k) for k in ("started", "finished", "status", "methods", "tasks", "counts")}
        ]
    except (OSError, ValueError, AttributeError):
        pass
    return {
        "llmrca_version": llmrca.__version__,
        "started": _now(),
        "finished": None,
        "status": "running",
        "methods": names,
        "cases": paths,
        "params": params,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "previous": previous,
    }


# --------------------------------------------------------------------------------------------- progress


class _Progress:
    """A rich progress bar on stderr where it is a terminal, plain lines every 10 s elsewhere
    (``llmrca.progress``), or nothing."""

    def __init__(self, total: int, resumed: int, replaced: int, *, enabled: bool) -> None:
        self.enabled = enabled and total > 0
        self.total = total
        self.resumed = resumed
        self.replaced = replaced
        self._bar = None
        self._plain = None
        self._done = 0

    def __enter__(self) -> Self:
        from llmrca.progress import PlainProgress, is_terminal

        if self.enabled and not is_terminal():
            self._plain = PlainProgress("evaluate", self.total)
            note = f"{self.resumed} already done, " if self.resumed else ""
            note += f"{self.replaced} stale, recomputing, " if self.replaced else ""
            self._note = note
            self._plain.update(0, note + "starting workers")
        elif self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
            )
            self._bar.start()
            note = f"{self.resumed} already done · " if self.resumed else ""
            note += f"{self.replaced} stale, recomputing · " if self.replaced else ""
            self._task = self._bar.add_task("evaluate", total=self.total, counts=note + "starting workers")
            self._note = note
        return self

    def advance(self, counts: dict[str, int]) -> None:
        if self._plain is not None:
            self._done += 1
            self._plain.update(self._done, self._note + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if self._bar is not None:
            text = self._note + " · ".join(f"{k} {v}" for k, v in counts.items())
            self._bar.update(self._task, advance=1, counts=text)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
