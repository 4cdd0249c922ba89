"""The result store of an evaluation: a row per (method, case, seed), safe against a run killed at any moment.

Layout of a results folder:
- ``results.jsonl`` — the journal, the source of truth: one JSON object per line, appended by a single
  ``write`` before the run moves on, so a finished row survives the run being killed (SIGKILL included: the
  data is in the kernel's page cache). ``fsync`` follows at most ``fsync_every_s`` later and at every
  checkpoint, bounding what a crash of the machine itself can lose. A kill in the middle of a write leaves at
  most one torn last line, which is dropped (that task simply runs again). When a key appears more than once
  (a failed task retried), the last line wins.
- ``results.parquet`` — the same rows as a table, rewritten atomically (temp file + rename) at checkpoints and
  at the end of a run. Parquet cannot be appended in place; a reader sees either the old or the new file.
- ``run.json`` — what was run (written by the runner); ``errors.log`` — tracebacks of failed tasks.

One run writes to a folder at a time (an exclusive lock on ``.lock``).

A write that fails (a full disk, ENOSPC; a read-only one, EROFS) cuts the journal back to its last whole line
before the error goes up, so the row is neither half-stored nor stored twice: the task just runs again on resume.
Every such error names the file it was writing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from llmrca.errors import FormatError, LlmrcaError, naming

JOURNAL = "results.jsonl"
PARQUET = "results.parquet"
RUN_JSON = "run.json"
ERRORS_LOG = "errors.log"
LOCK = ".lock"

# Column → pandas dtype of a results frame, in order.
COLUMNS: dict[str, str] = {
    "method": "string",
    "family": "string",
    "case_id": "string",
    "fault_type": "string",
    "root_cause": "string",  # true service; null for a normal case
    "indicator": "string",  # true indicator (service_metric); null where unknown
    "rank": "Int64",  # 1-based service-level rank of the truth; null when absent or status != ok
    "rank_fine": "Int64",  # 1-based rank of the true indicator; null when absent or not fine_level
    "fine_level": "boolean",  # the case is scored at fine-grained level for this method; null when not ok
    "n_candidates": "Int64",  # number of candidate services of the case
    "top5": "string",  # JSON list of the method's top-5 services
    "runtime_s": "float64",  # wall time of rank() alone
    "peak_mem_mb": "float64",  # peak RSS growth of the worker during rank()
    "status": "string",  # "ok", "no-answer: <reason>", "error: <Type>: <message>" or "timeout"
    "seed": "int64",
    "case_path": "string",
    "input_hash": "string",  # content hash of what made the row (llmrca.evaluate.desk); a resume reuses a row
    # only when it matches
    # Added with fault kinds and fault-free scoring; absent (null) in results written before them, which still load.
    "fault_kind": "string",  # the truth's kind (GroundTruth.fault_kind): what a diagnosis is scored against
    "diagnosis": "string",  # the kind the method named (Ranking.diagnosis); null when it names none
    "top_score": "float64",  # highest score of the ranking (Ranking.top_score); null when none / not ok
    "roots": "string",  # JSON list of the root services of a multi-fault case; null for a single-fault one
    "rank_all": "Int64",  # multi-fault: rank of the worst-placed root (all roots in top k); rank when one root
    # Added with the report's per-case pages; null in results written before, and when not ok.
    "top_candidates": "string",  # JSON list of [candidate, score] of the ranking's first 10 candidates
}
KEY = ("method", "case_id", "seed")


def row_key(row: dict[str, Any]) -> tuple[str, str, int]:
    return (str(row["method"]), str(row["case_id"]), int(row["seed"]))


def normalize_row(row: dict[str, Any]) -> dict[str, Any]:
    """Every column present, in order; NaN → None so the JSON stays strict."""
    out: dict[str, Any] = {}
    for c in COLUMNS:
        v = row.get(c)
        if isinstance(v, float) and math.isnan(v):
            v = None
        out[c] = v
    missing = [c for c in KEY if out[c] is None]
    if missing:
        raise ValueError(f"result row lacks {', '.join(missing)}: {row!r}")
    return out


def rows_to_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    rows = list(rows)
    data = {c: pd.array([r.get(c) for r in rows], dtype=t) for c, t in COLUMNS.items()}
    return pd.DataFrame(data)


def frame_to_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for rec in frame.to_dict(orient="records"):
        rows.append(normalize_row({k: (None if _is_missing(v) else _plain(v)) for k, v in rec.items()}))
    return rows


def _is_missing(v: Any) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def read_journal(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Rows of a journal and the byte length of its intact part (a torn last line is not part of it)."""
    data = Path(path).read_bytes()
    end = data.rfind(b"\n") + 1  # bytes after the last newline are a write cut short
    rows: list[dict[str, Any]] = []
    for no, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(normalize_row(json.loads(line)))
        except (ValueError, TypeError, KeyError) as e:
            warnings.warn(f"{path}:{no}: unreadable result line skipped ({e})", stacklevel=2)
    return rows, end


def _dedupe(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    out: dict[tuple[str, str, int], dict[str, Any]] = {}
    for r in rows:
        k = row_key(r)
        out.pop(k, None)  # re-insert so the order is that of the latest write
        out[k] = r
    return out


def _read_parquet_rows(path: Path) -> list[dict[str, Any]]:
    try:
        frame = pq.read_table(path).to_pandas()
    except (pa.ArrowInvalid, OSError) as e:
        raise FormatError(f"{path}: not a readable results file ({e})") from None
    missing = [c for c in KEY if c not in frame.columns]
    if missing:
        raise FormatError(f"{path}: not a results table (missing column(s) {', '.join(missing)})")
    return frame_to_rows(frame)


def load_results(path: str | Path) -> pd.DataFrame:
    """Results of a folder (journal first, else ``results.parquet``) or of one ``.jsonl``/``.parquet`` file.

    Read-only: it takes no lock, so it can watch a run in progress. One row per (method, case_id, seed).
    """
    p = Path(path)
    if p.is_dir():
        if (p / JOURNAL).is_file():
            rows, _ = read_journal(p / JOURNAL)
        elif (p / PARQUET).is_file():
            rows = _read_parquet_rows(p / PARQUET)
        else:
            raise FormatError(f"{p}: holds no results ({JOURNAL} or {PARQUET})")
    elif p.is_file() and p.suffix == ".jsonl":
        rows, _ = read_journal(p)
    elif p.is_file() and p.suffix == ".parquet":
        rows = _read_parquet_rows(p)
    else:
        raise FormatError(f"{p}: no such results folder or file")
    return rows_to_frame(_dedupe(rows).values())


def write_atomic(path: Path, data: bytes) -> None:
    with naming(path):
        _write_atomic(path, data)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ResultStore:
    """The writable store of one results folder; use as a context manager.

    Opening it locks the folder, repairs a torn journal tail, and loads the rows already there (from the
    journal, or from ``results.parquet`` alone, which then seeds a new journal).
    """

    def __init__(self, out_dir: str | Path, *, fsync_every_s: float = 1.0) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fsync_every_s = fsync_every_s
        self._synced = time.monotonic()
        self._lock_fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise LlmrcaError(f"{self.dir}: another evaluation is writing to this folder") from None
        try:
            self._open()
        except BaseException:
            self._unlock()
            raise

    def _open(self) -> None:
        journal = self.dir / JOURNAL
        seed_rows: list[dict[str, Any]] = []
        if journal.is_file():
            rows, good = read_journal(journal)
            if good < journal.stat().st_size:
                os.truncate(journal, good)
        else:
            rows = []
            if (self.dir / PARQUET).is_file():
                rows = seed_rows = _read_parquet_rows(self.dir / PARQUET)
        self._rows = _dedupe(rows)
        self._fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        for r in seed_rows:
            self._write(r)
        # A run stopped before its last checkpoint (a full disk, a kill) leaves the parquet behind the journal.
        parquet = self.dir / PARQUET
        self._dirty = bool(seed_rows) or not parquet.is_file() or (
            journal.stat().st_mtime_ns > parquet.stat().st_mtime_ns)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(best_effort=exc_type is not None)

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: tuple[str, str, int]) -> dict[str, Any] | None:
        return self._rows.get(key)

    def rows(self) -> list[dict[str, Any]]:
        return list(self._rows.values())

    def case_ids_by_path(self) -> dict[str, str]:
        """case_path → case_id of the rows already stored (lets a resume skip cases without loading them)."""
        return {r["case_path"]: r["case_id"] for r in self._rows.values() if r.get("case_path")}

    def append(self, row: dict[str, Any]) -> dict[str, Any]:
        row = normalize_row(row)
        self._write(row)
        self._rows.pop(row_key(row), None)
        self._rows[row_key(row)] = row
        self._dirty = True
        return row

    def _write(self, row: dict[str, Any]) -> None:
        line = (json.dumps(row, allow_nan=False, separators=(",", ":")) + "\n").encode()
        with naming(self.dir / JOURNAL):
            end = os.fstat(self._fd).st_size
            try:
                n = os.write(self._fd, line)
                while n < len(line):  # a short write to a regular file is rare, but possible (a disk filling up)
                    n += os.write(self._fd, line[n:])
            except OSError:
                # Drop what part of the line got in, so a later append cannot glue onto it; shrinking needs no
                # free space. The row is not stored (and not in memory): its task runs again on resume.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, end)
                raise
            if time.monotonic() - self._synced >= self.fsync_every_s:
                self.sync()

    def sync(self) -> None:
        """Flush the journal to the disk (a write alone already survives the process being killed)."""
        with naming(self.dir / JOURNAL):
            os.fsync(self._fd)
        self._synced = time.monotonic()

    def frame(self) -> pd.DataFrame:
        return rows_to_frame(self._rows.values())

    def checkpoint(self) -> None:
        """Sync the journal; rewrite ``results.parquet`` (sorted by method, case, seed) if rows changed."""
        self.sync()
        if not self._dirty and (self.dir / PARQUET).exists():
            return
        frame = self.frame().sort_values(list(KEY), kind="stable").reset_index(drop=True)
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink, compression="zstd")
        write_atomic(self.dir / PARQUET, sink.getvalue().to_pybytes())
        self._dirty = False

    def log_error(self, key: tuple[str, str, int], text: str) -> None:
        with naming(self.dir / ERRORS_LOG), open(self.dir / ERRORS_LOG, "a", encoding="utf-8") as f:
            f.write(f"=== method={key[0]} case={key[1]} seed={key[2]}\n{text.rstrip()}\n")

    def close(self, *, best_effort: bool = False) -> None:
        """Checkpoint and unlock. ``best_effort`` (an error is already on its way up, e.g. a full disk): a
        checkpoint that fails is skipped so the first error is the one reported; the journal holds every row and
        the next open rewrites ``results.parquet`` from it."""
        if getattr(self, "_fd", None) is None:
            return
        try:
            self.checkpoint()
        except OSError:
            if not best_effort:
                raise
        finally:
            os.close(self._fd)
            self._fd = None
            self._unlock()

    def _unlock(self) -> None:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            os.close(self._lock_fd)
