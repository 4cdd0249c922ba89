"""Runs one RCAEval method on RCAEval case folders, inside the separate RCAEval virtual environment.

Started by ``benchmarks/vs_rcaeval.py`` (never imported by llmrca, and it never imports llmrca):

    <rcaeval-venv>/bin/python benchmarks/vs_rcaeval_driver.py JOB.json

``JOB.json``: {"method", "module", "function", "input": "metrics" | "traces" | "multi-source", "cases": [{"id",
"dir", "sli"}], "dataset", "length", "seed", "timeout", "out"}. For every case, one JSON line is appended to
``out`` (flushed at once, so a run that is killed keeps what it finished):
{"case_id", "status", "seconds", "ranks", "note"}. ``status`` is ``ok``; ``fallback: …`` when RCAEval's own
failure handler (the ``rca`` decorator in ``RCAEval/e2e/__init__.py``) swallowed an exception and returned the
unranked column order, or the method returned the column order because its graph had no edge; ``error: …``;
or ``timeout``. ``seconds`` is the wall time of the method call alone (loading the CSV files is not counted),
``cpu_seconds`` its CPU time (``time.process_time``: this process's user + system time, every thread).

Loading follows RCAEval's own benchmark script (``main.py`` of RCAEval 1.8.1): ``data.csv`` with the
``*_latency-50`` columns dropped, infinities → NaN, forward fill, then 0; ``inject_time.txt`` parsed with
``int``; the last/first ``length * 60 // 2`` rows before/after the injection (``--length 20``: 600 rows each
side); ``*_latency-90`` renamed to ``*_latency``; the call
``f(data, inject_time, dataset=…, anomalies=None, dk_select_useful=False, sli=…, verbose=False, n_iter=<columns>)``.
Multi-source methods get RCAEval's dict of ``metric``, ``logts``, ``tracets_err`` and ``tracets_lat`` (the
derived series windowed to ``length * 4 // 2`` rows each side, as ``main.py`` does). Trace methods, which
``main.py`` does not run, get ``traces.csv`` (ids read as text) and the injection time in microseconds, the
unit of ``startTime`` (the conversion is commented out inside ``tracerca`` / ``microrank``, so the caller does it).
Before every call the global NumPy and ``random`` generators (and torch's, when loaded) are seeded with ``seed``:
several RCAEval methods draw from the global NumPy generator without a seed of their own.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
import random
import signal
import sys
import time
import traceback


class CallTimeout(BaseException):
    """Raised by the alarm; a BaseException so that RCAEval's ``except Exception`` fallback cannot swallow it."""


def _alarm(signum, frame):
    raise CallTimeout()


def _inject_time(case_dir: str) -> int:
    with open(os.path.join(case_dir, "inject_time.txt"), encoding="utf-8") as f:
        return int(f.readline().strip())


def _window(frame, inject_time: int, rows: int):
    import pandas as pd

    before = frame[frame["time"] < inject_time].tail(rows)
    after = frame[frame["time"] >= inject_time].head(rows)
    return pd.concat([before, after], ignore_index=True)


def load_metrics(case_dir: str, length: int):
    import numpy as np
    import pandas as pd

    data = pd.read_csv(os.path.join(case_dir, "data.csv"))
    data = data.loc[:, ~data.columns.str.endswith("_latency-50")]
    data = data.replace([np.inf, -np.inf], np.nan).ffill().fillna(0)
    inject_time = _inject_time(case_dir)
    data = _window(data, inject_time, length * 60 // 2)
    data = data.rename(columns={c: c[: -len("-90")] for c in data.columns if c.endswith("_latency-90")})
    return data, inject_time


def load_multi_source(case_dir: str, length: int):
    import pandas as pd

    metric, inject_time = load_metrics(case_dir, length)
    rows = length * 4 // 2

    def derived(name: str):
        path = os.path.join(case_dir, name)
        if not os.path.exists(path):
            return pd.DataFrame()
        frame = pd.read_csv(path)
        return _window(frame, inject_time, rows) if len(frame) else frame

    data = {"metric": metric, "logts": derived("logts.csv"), "tracets_err": derived("tracets_err.csv"),
            "tracets_lat": derived("tracets_lat.csv")}
    return data, inject_time


def load_traces(case_dir: str):
    import pandas as pd

    ids = {"traceID": str, "spanID": str, "parentSpanID": str, "serviceName": str, "methodName": str,
           "operationName": str}
    traces = pd.read_csv(os.path.join(case_dir, "traces.csv"), dtype=ids)
    return traces, _inject_time(case_dir) * 1_000_000


def _seed(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def _column_order(data) -> list[str] | None:
    cols = getattr(data, "columns", None)
    return [c for c in cols if c != "time"] if cols is not None else None


def _fallback(out: dict, data, err_text: str, function: str) -> str | None:
    """Why the ranking is not the method's own answer, or None."""
    marker = f"{function} failed ("
    if marker in err_text:
        line = err_text[err_text.index(marker):].splitlines()[0]
        return f"fallback: {line}"
    adj = out.get("adj")
    try:
        import numpy as np

        empty = adj is not None and np.asarray(adj).size > 0 and not np.asarray(adj).any()
    except (TypeError, ValueError):
        empty = False
    if empty and list(out.get("ranks") or []) == _column_order(data):
        return "fallback: the graph has no edge; the ranking is the column order"
    return None


def run_case(func, job: dict, case: dict) -> dict:
    row = {"case_id": case["id"], "status": "ok", "seconds": None, "cpu_seconds": None, "ranks": [], "note": ""}
    kind = job["input"]
    try:
        if kind == "traces":
            data, inject_time = load_traces(case["dir"])
            kwargs = {"dataset": job["dataset"]}
        elif kind == "multi-source":
            data, inject_time = load_multi_source(case["dir"], job["length"])
            kwargs = {"dataset": job["dataset"], "sli": case.get("sli")}
        else:
            data, inject_time = load_metrics(case["dir"], job["length"])
            kwargs = {"dataset": job["dataset"], "anomalies": None, "dk_select_useful": False,
                      "sli": case.get("sli"), "verbose": False, "n_iter": len(data.columns) - 1}
    except Exception as e:  # noqa: BLE001 - a case RCAEval's loading cannot read is a result too
        row["status"] = f"error: loading: {type(e).__name__}: {e}"[:500]
        return row
    captured_out, captured_err = io.StringIO(), io.StringIO()
    _seed(job["seed"])
    signal.signal(signal.SIGALRM, _alarm)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        with contextlib.redirect_stdout(captured_out), contextlib.redirect_stderr(captured_err):
            signal.setitimer(signal.ITIMER_REAL, float(job["timeout"]))
            try:
                out = func(data, inject_time, **kwargs)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        row.update(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
    except CallTimeout:
        row.update(status="timeout", seconds=time.perf_counter() - t0)
        return row
    except Exception as e:  # noqa: BLE001 - the method's own exception, reported as a row
        row.update(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
        tb = traceback.extract_tb(e.__traceback__)
        where = f" ({os.path.basename(tb[-1].filename)}:{tb[-1].lineno} in {tb[-1].name})" if tb else ""
        row["status"] = f"error: {type(e).__name__}: {' '.join(str(e).split())}"[:400] + where
        return row
    ranks = out.get("ranks") if isinstance(out, dict) else None
    if not ranks:
        row["status"] = "error: empty ranking (the method returned no candidate)"
        return row
    row["ranks"] = [str(r) for r in ranks]
    why = _fallback(out, data, captured_err.getvalue(), job["function"])
    if why:
        row["status"] = why[:500]
    return row


def main(argv: list[str]) -> int:
    with open(argv[0], encoding="utf-8") as f:
        job = json.load(f)
    t0 = time.perf_counter()
    module = importlib.import_module(job["module"])
    func = getattr(module, job["function"])
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import_s = time.perf_counter() - t0
    with open(job["out"], "a", encoding="utf-8") as out:
        for case in job["cases"]:
            row = run_case(func, job, case)
            row["import_s"] = import_s
            for k in ("seconds", "cpu_seconds"):
                if row[k] is not None and not math.isfinite(row[k]):
                    row[k] = None
            out.write(json.dumps(row) + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
