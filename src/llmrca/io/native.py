"""Native case folders: case.json + metrics.parquet + traces.parquet + logs.parquet."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from llmrca.case import LOG_COLUMNS, TRACE_COLUMNS, Case, Observation
from llmrca.case.schema import coerce, empty_logs, empty_traces
from llmrca.errors import CaseError, FormatError, naming
from llmrca.io.case_json import read_fields

CASE_JSON = "case.json"
METRICS = "metrics.parquet"
TRACES = "traces.parquet"
LOGS = "logs.parquet"
FORMAT = "llmrca-case"
FORMAT_VERSION = 1


def is_native_dir(path: Path) -> bool:
    return (Path(path) / CASE_JSON).is_file()


def case_to_json(case: Case) -> dict[str, Any]:
    obs = case.observation
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "id": case.id,
        "system": case.system,
        "interval": obs.interval,
        "inject_time": obs.inject_time,
        "fault": case.truth.to_dict(),
        "topology": obs.topology.to_dict(),
        **({"source": obs.source} if obs.source else {}),  # only when set: older files stay byte-equal
        "provenance": case.provenance,
    }


def write_case(case: Case, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``case`` to ``out_dir`` atomically: a reader never sees a half-written case."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass overwrite=True to replace it)")
    with naming(out):
        return _write_case(case, out)


def _write_case(case: Case, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        obs = case.observation
        with open(tmp / CASE_JSON, "w", encoding="utf-8") as f:
            json.dump(case_to_json(case), f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
        _write_parquet(obs.metrics, tmp / METRICS)
        traces = obs.traces if obs.traces is not None and len(obs.traces) else empty_traces()
        logs = obs.logs if obs.logs is not None and len(obs.logs) else empty_logs()
        _write_parquet(coerce(traces, TRACE_COLUMNS, "traces"), tmp / TRACES)
        _write_parquet(coerce(logs, LOG_COLUMNS, "logs"), tmp / LOGS)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    pq.write_table(table, path, compression="zstd")


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pq.read_table(path).to_pandas()
    except FileNotFoundError:
        raise FormatError(f"{path}: file missing") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise FormatError(f"{path}: not a readable Parquet file ({e})") from None


def read_case(path: str | Path, *, validate: bool = True) -> Case:
    path = Path(path)
    meta_path = path / CASE_JSON
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise FormatError(f"{meta_path}: file missing") from None
    except UnicodeDecodeError as e:
        raise FormatError(f"{meta_path}: not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise FormatError(f"{meta_path}: invalid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise FormatError(f"{meta_path}: not an llmrca case (must be a JSON object, is {type(meta).__name__})")
    if meta.get("format", FORMAT) != FORMAT:
        raise FormatError(f"{meta_path}: not an llmrca case (field 'format' is {meta.get('format')!r})")
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise FormatError(f"{meta_path}: format_version: must be an integer, is {version!r}")
    if version > FORMAT_VERSION:
        raise FormatError(f"{meta_path}: format_version {version} is newer than this llmrca reads")
    fields = read_fields(meta, meta_path)
    obs = Observation(
        metrics=_read_parquet(path / METRICS),
        traces=_read_optional(path / TRACES, TRACE_COLUMNS),
        logs=_read_optional(path / LOGS, LOG_COLUMNS),
        inject_time=fields.inject_time,
        topology=fields.topology,
        interval=fields.interval,
        source=fields.source,
    )
    case = Case(
        id=fields.id or path.name,
        observation=obs,
        truth=fields.truth,
        system=fields.system,
        provenance=fields.provenance,
    )
    if validate:
        try:
            case.validate()
        except CaseError as e:
            raise CaseError(e.problems, where=str(path)) from None
    return case


def _read_optional(path: Path, columns: dict[str, str]) -> pd.DataFrame:
    if not path.exists():
        return coerce(pd.DataFrame({c: [] for c in columns}), columns, str(path))
    return coerce(_read_parquet(path), columns, str(path))
