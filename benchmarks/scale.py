"""Scale benchmark: time, peak memory and accuracy of every method as the number of metric columns grows.

    python benchmarks/scale.py                                  # the default grid (~10-15 min on 2 cores)
    python benchmarks/scale.py --sizes 50,200,1000 --methods baro,nsigma,circa --seeds 2
    python benchmarks/scale.py --sizes 1000 --limit 60 --methods all    # which methods fit 60 s at 1,000
    python benchmarks/scale.py --sizes 50,200 --methods baro,circa --rcaeval   # + RCAEval 1.8.1's time

Sizes (``--sizes``, comma list, run in order of their column count):

- ``50``, ``200``, ``1000``, ``2000`` (any integer that is a multiple of ``--metrics``): planted cases
  (``llmrca.synthetic.planted_case``, ``frontend=True``) of ``columns / metrics - 1`` services plus the entry
  service ``frontend``, ``--metrics`` (default 10) metrics each, so ``columns`` metric columns exactly. The edge
  probability of the random DAG is ``min(0.3, 2.4 / services)``: about one parent per service at every size, so the
  root's signal does not drown in a thousand parents and accuracy can be compared across sizes. Seed ``s`` is a
  linear SEM when even, a non-linear one when odd.
- ``sim3``, ``sim8``, ``sim16``: the full view (``select_view(obs, "full")``) of the ``paper`` scenario with
  ``deployment.replicas=3`` / ``8`` / ``16`` (219 / 557 / 1,101 columns), one case per seed, rotating over the
  scenario's faults (with traces and logs, so trace and multi-source methods run too); seeds 0-3 fault
  ``ray-replicas-0``, 4-7 ``ray-head``, 8-11 ``ray-replicas-1``, at every replica count; seeds 12-23 do the same
  with the suite's second repetition (other simulator seeds), and so on, so every seed is a different case. ``sim3`` against
  ``sim16`` is the like-for-like accuracy test of a served system at ~200 and ~1,000 columns: the same faults on
  the same targets, only the replica count differs (so a replica carries 1/16 of the traffic instead of 1/3).

Every (method, case) runs in a forked child process (the case is built once in the parent) with a per-size time
limit (``--limit``: one number for all, or ``SIZE:SECONDS,...``; default 60 s at 1,000 columns and above, less
below, see ``DEFAULT_LIMITS``); a child past its limit is killed and counted as a timeout. A method that timed
out at one size is not run at larger ones (its cells read ``skip``). Per (method, size) it prints the median time
of ``rank()`` per case, the peak memory of the child above what it had when it started (``VmHWM`` reset through
``/proc/self/clear_refs``, else ``ru_maxrss``), and the service-level AC@1, Avg@5 and rank% (errors and timeouts
count as misses; rank% is the mean of (rank − 1) / (services − 1) over the cases, 0 = always first, about 0.5 =
chance at every size, 1 for a miss: AC@k of a method at chance falls with the service count by itself, from 1/20
at 200 columns to 1/100 at 1,000, so rank% is the measure that compares sizes); then one table of time per case vs columns with the growth exponent per method: the least-squares
slope of log(time) against log(columns) over the planted sizes where every case finished (at least two sizes;
times under 5 ms are left out of the fit, where interpreter overhead dominates).

``--rcaeval`` also times RCAEval 1.8.1's function for the methods both have (``benchmarks/vs_rcaeval.py``'s
``PAIRS``) on the planted cases, exported in RCAEval's layout (``llmrca.io.rcaeval.write_case``) and run by
``benchmarks/vs_rcaeval_driver.py`` in the reference environment (``--venv``, made on first use by
``vs_rcaeval.ensure_reference_env``; needs the network the first time). ``--markdown FILE`` writes the summary
table as Markdown. Threads: whatever the environment sets (the figures in ``docs/bench.md`` used the default).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_SIZES = ("50", "200", "1000", "2000", "sim3", "sim8", "sim16")
DEFAULT_LIMITS = {50: 20.0, 200: 40.0}  # seconds per case below 1,000 columns; 60 s from 1,000 on
DEFAULT_LIMIT = 60.0
METRIC_NAMES = ("cpu", "mem", "latency", "gpu_util", "kv_usage", "queue", "tokens", "errors", "net_rx", "net_tx")
SIM_REPLICAS = {"sim3": 3, "sim8": 8, "sim16": 16}


@dataclass(frozen=True)
class Size:
    label: str  # "1000" or "sim8"
    columns: int  # metric columns of its cases (planted: exact; sim: of the first case)
    planted: bool


@dataclass
class Outcome:
    status: str  # "ok", "error: ...", "timeout", "skip"
    seconds: float | None = None
    peak_mb: float | None = None
    rank: int | None = None
    services: int = 0  # services of the case: the denominator of rank%


# ---------------------------------------------------------------------------------------------------- cases


def planted_shape(columns: int, metrics: int = 10) -> tuple[int, int]:
    """(services without the frontend, metrics per service) of a planted case with ``columns`` metric columns."""
    if metrics < 1 or metrics > len(METRIC_NAMES):
        raise ValueError(f"--metrics must be 1..{len(METRIC_NAMES)}, got {metrics}")
    if columns % metrics or columns // metrics < 3:
        raise ValueError(f"size {columns}: the column count must be a multiple of --metrics ({metrics}) and at "
                         f"least {3 * metrics}")
    return columns // metrics - 1, metrics


def planted(columns: int, seed: int, metrics: int = 10) -> Any:
    """One planted case of exactly ``columns`` metric columns (see the module docstring)."""
    from llmrca.synthetic import planted_case

    services, k = planted_shape(columns, metrics)
    return planted_case(n_services=services, metrics=METRIC_NAMES[:k], edge_prob=min(0.3, 2.4 / services),
                        nonlinear=seed % 2 == 1, frontend=True, seed=seed)


def simulated(replicas: int, seed: int) -> Any:
    """The full view of one ``paper`` case with ``replicas`` replicas; faults rotate with ``seed``."""
    from llmrca.case.views import select_view
    from llmrca.sim import simulate
    from llmrca.sim.suites import plan

    faults = sorted({s.injection.fault for s in plan("paper", reps=1)})
    # Every 12 seeds (4 faults × 3 targets) take the suite's next repetition, so no two seeds give the same case;
    # a repetition's simulator seed does not depend on how many repetitions the plan has, nor on the replica count.
    rep = seed // (3 * len(faults))
    specs = plan("paper", reps=rep + 1, sets={"deployment.replicas": replicas})
    fault = faults[seed % len(faults)]
    mine = [s for s in specs if s.injection.fault == fault]
    targets = list(dict.fromkeys(s.injection.target for s in mine))  # the head, then the replicas in order
    # The same target at every replica count, so sim3 and sim16 compare like for like: seeds 0-3 a replica's fault,
    # 4-7 the head's, 8-11 a second replica's.
    target = targets[(1, 0, 2)[(seed // len(faults)) % 3] % len(targets)]
    spec = next(s for s in mine if s.injection.target == target and s.case_id.endswith(f"/rep-{rep:02d}"))
    case = simulate(spec.config, spec.injection, seed=spec.seed, case_id=spec.case_id)
    return select_view(case, "full")


def parse_sizes(text: str, metrics: int) -> list[Size]:
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part in SIM_REPLICAS:
            # The column count is known only once simulated; 3 replicas → 219, 8 → 557, 16 → 1,101 (full view).
            out.append(Size(part, 0, False))
        else:
            try:
                n = int(part)
            except ValueError:
                raise SystemExit(f"--sizes: {part!r} is neither a column count nor one of "
                                 f"{', '.join(SIM_REPLICAS)}") from None
            try:
                planted_shape(n, metrics)
            except ValueError as e:
                raise SystemExit(f"--sizes: {e}") from None
            out.append(Size(part, n, True))
    return out


def parse_limits(text: str | None) -> dict[str, float]:
    """``"60"`` → every size 60 s; ``"50:10,1000:60"`` → those sizes (others get the defaults)."""
    if not text:
        return {}
    if ":" not in text:
        return {"*": float(text)}
    out = {}
    for part in text.split(","):
        label, _, secs = part.partition(":")
        out[label.strip()] = float(secs)
    return out


def limit_for(size: Size, limits: dict[str, float]) -> float:
    if size.label in limits:
        return limits[size.label]
    if "*" in limits:
        return limits["*"]
    return DEFAULT_LIMITS.get(size.columns, DEFAULT_LIMIT) if size.columns < 1000 else DEFAULT_LIMIT


# --------------------------------------------------------------------------------------------- measuring


def growth_exponent(columns: list[float], seconds: list[float], *, floor: float = 0.005) -> float | None:
    """Least-squares slope of log(seconds) vs log(columns); None with fewer than two usable points.

    Points under ``floor`` seconds are left out (fixed overhead, not growth)."""
    pts = [(math.log(c), math.log(s)) for c, s in zip(columns, seconds, strict=True)
           if s is not None and s >= floor and c > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def _status_kb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def _child(name: str, case: Any, conn: Any) -> None:
    from llmrca.errors import LlmrcaError
    from llmrca.evaluate.scores import truth_ranks
    from llmrca.methods import get_method

    try:
        get_method(name).rank(_warm_case().observation, seed=0)
    except Exception:  # noqa: BLE001, S110 - only what the first call loads matters here
        pass
    conn.send("warm")
    reset = False
    try:  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        pass
    start_kb = _status_kb("VmRSS") or 0.0
    obs = case.observation
    t0 = time.perf_counter()
    try:
        method = get_method(name)
        t0 = time.perf_counter()
        ranking = method.rank(obs, seed=0)
        seconds = time.perf_counter() - t0
        rank = truth_ranks(ranking, case.truth, obs).rank
        status = "ok"
    except LlmrcaError as e:
        seconds, rank, status = time.perf_counter() - t0, None, "error: " + str(e).splitlines()[0][:200]
    except Exception as e:  # noqa: BLE001 - a crash is a result here, reported with its type
        seconds, rank, status = time.perf_counter() - t0, None, f"error: {type(e).__name__}: {str(e)[:200]}"
    peak_kb = (_status_kb("VmHWM") if reset else None) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    conn.send((status, seconds, max(0.0, peak_kb - start_kb) / 1024.0, rank))
    conn.close()


def _warm_case() -> Any:
    from llmrca.synthetic import planted_case

    return planted_case(n_services=3, metrics=METRIC_NAMES[:4], frontend=True, seed=0)


def run_one(name: str, case: Any, limit: float, *, warm_limit: float = 120.0) -> Outcome:
    """``name`` on ``case`` in a forked child, killed after ``limit`` seconds of ``rank()``. The child first ranks
    a 16-column planted case (untimed), so that what a method loads on its first call is not counted. This
    process imports the method's module but never runs a method: forking after a method ran can deadlock the
    child (libgomp's OpenMP pool, used by scikit-learn's BIRCH and by torch, does not survive a fork)."""
    import llmrca.evaluate.scores  # noqa: F401 - imported once here, not in every child
    from llmrca.errors import LlmrcaError
    from llmrca.methods.registry import method_class

    try:
        method_class(name)
    except (LlmrcaError, ImportError) as e:
        return Outcome("error: " + str(e).splitlines()[0][:200])
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(name, case, child), daemon=True)
    t0 = time.perf_counter()
    proc.start()
    child.close()
    try:
        if not parent.poll(warm_limit):
            return Outcome("timeout", None)
        first = parent.recv()
        if first != "warm":
            return Outcome(str(first))
        t0 = time.perf_counter()
        if parent.poll(limit + 2.0):
            status, seconds, peak_mb, rank = parent.recv()
            proc.join(10)
            if seconds > limit:
                return Outcome("timeout", seconds, peak_mb)
            return Outcome(status, seconds, peak_mb, rank)
        return Outcome("timeout", time.perf_counter() - t0)
    except EOFError:
        proc.join(5)
        return Outcome(f"error: the child died (exit {proc.exitcode})", time.perf_counter() - t0)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        parent.close()


# -------------------------------------------------------------------------------------------------- RCAEval


def rcaeval_times(names: list[str], cases: dict[str, list[Any]], sizes: list[Size], limits: dict[str, float],
                  venv: Path, out: Path) -> dict[tuple[str, str], float | str | None]:
    """(method, size label) -> RCAEval's median seconds per case, or its status when no case finished
    ("error", "timeout", "fallback"; the rows are in ``out/rcaeval-<size>/reference/``), planted sizes only."""
    import types

    sys.path.insert(0, str(HERE))
    import vs_rcaeval as vs

    from llmrca.io.rcaeval import case_id, write_case
    from llmrca.methods.sli import sli_column

    marker = Path(venv) / "vs-rcaeval.json"  # an environment made with torch is used as it is
    with_torch = marker.is_file() and json.loads(marker.read_text()).get("torch") is not None
    vs.ensure_reference_env(Path(venv), torch=with_torch)
    out: Path = Path(out)
    got: dict[tuple[str, str], float | str | None] = {}
    timed_out: set[str] = set()
    for size in sizes:
        if not size.planted:
            continue
        root = out / f"rcaeval-{size.label}"
        items = []
        for case in cases[size.label]:
            d = write_case(case, root, overwrite=True)
            items.append({"id": case_id(d, root), "dir": str(d), "sli": sli_column(case.observation)})
        for name in names:
            if name not in vs.PAIRS or vs.PAIRS[name][2] != "metrics":
                continue
            if name in timed_out:  # as for ours: past its limit at a smaller size, not run at larger ones
                got[(name, size.label)] = "skip"
                continue
            args = types.SimpleNamespace(seed=0, timeout=int(limit_for(size, limits)))
            rows = vs.run_reference(name, items, venv, root, args)
            secs = [r["seconds"] for r in rows.values() if r.get("status") == "ok" and r.get("seconds")]
            bad = sorted({str(r.get("status")).split(":")[0] for r in rows.values() if r.get("status") != "ok"})
            got[(name, size.label)] = statistics.median(secs) if secs else (bad[0] if bad else None)
            if "timeout" in bad:
                timed_out.add(name)
    return got


# ----------------------------------------------------------------------------------------------------- main


def _fmt_s(x: float | str | None) -> str:
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 10 else f"{x:.0f}"


def summarize(outs: list[Outcome]) -> dict[str, Any]:
    from llmrca.evaluate import ac_at_k, avg_at_k

    if not outs or all(o.status == "skip" for o in outs):
        return {"cell": "skip", "seconds": None}
    ok = [o for o in outs if o.status == "ok"]
    timeouts = sum(o.status == "timeout" for o in outs)
    errors = [o.status for o in outs if o.status.startswith("error")]
    secs = statistics.median([o.seconds for o in ok]) if ok else None
    ranks = [o.rank if o.status == "ok" else None for o in outs]
    peak = max((o.peak_mb for o in ok if o.peak_mb is not None), default=None)
    rel = [(r - 1) / max(1, o.services - 1) if r is not None else 1.0 for r, o in zip(ranks, outs, strict=True)]
    if timeouts:
        cell = f"> limit ({timeouts}/{len(outs)})"
    elif len(errors) == len(outs):
        cell = "error"
    else:
        cell = _fmt_s(secs) + (f" ({len(errors)}/{len(outs)} failed)" if errors else "")
    return {"cell": cell, "seconds": secs if not timeouts and not errors else None, "any_seconds": secs,
            "peak_mb": peak, "ac1": ac_at_k(ranks, 1), "avg5": avg_at_k(ranks, 5), "timeouts": timeouts,
            "rank_pct": statistics.fmean(rel),
            "errors": errors}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(DEFAULT_SIZES))
    ap.add_argument("--methods", default="all", help="'all' (every registered method) or a comma list")
    ap.add_argument("--seeds", type=int, default=2, help="cases per size (default 2)")
    ap.add_argument("--metrics", type=int, default=10, help="metrics per planted service (default 10)")
    ap.add_argument("--limit", default=None, help="seconds per case: N, or SIZE:N,... (default: see docstring)")
    ap.add_argument("--no-skip", action="store_true", help="run larger sizes even after a timeout")
    ap.add_argument("--rcaeval", action="store_true", help="also time RCAEval 1.8.1 (planted sizes)")
    ap.add_argument("--venv", type=Path, default=HERE / ".rcaeval-venv")
    ap.add_argument("--out", type=Path, default=Path("scale-bench"), help="folder for --rcaeval's exports")
    ap.add_argument("--markdown", type=Path, default=None, help="write the summary table here as Markdown")
    args = ap.parse_args()

    from llmrca.methods import names as method_names

    names = method_names() if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(names) - set(method_names()))
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(method_names())}")
    sizes = parse_sizes(args.sizes, args.metrics)
    limits = parse_limits(args.limit)

    print(f"# scale benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {args.seeds} case(s) per size", flush=True)
    cases: dict[str, list[Any]] = {}
    built = []
    for size in sizes:
        t0 = time.perf_counter()
        if size.planted:
            cases[size.label] = [planted(size.columns, s, args.metrics) for s in range(args.seeds)]
        else:
            cases[size.label] = [simulated(SIM_REPLICAS[size.label], s) for s in range(args.seeds)]
        cols = len(cases[size.label][0].observation.metric_columns)
        built.append(Size(size.label, cols, size.planted))
        print(f"  cases {size.label}: {cols} columns, "
              f"{len(cases[size.label][0].observation.topology.services)} services, built in {time.perf_counter() - t0:.1f} s, limit "
              f"{limit_for(size, limits):.0f} s/case", flush=True)
    sizes = sorted(built, key=lambda s: s.columns)

    results: dict[tuple[str, str], dict[str, Any]] = {}
    print(f"\n{'method':20s} {'size':>6s} {'cols':>5s} {'s/case':>9s} {'peak MB':>8s} {'AC@1':>5s} {'Avg@5':>5s}"
          " rank%  note", flush=True)
    for name in names:
        timed_out_at = None
        for size in sizes:
            if timed_out_at is not None and not args.no_skip:
                results[(name, size.label)] = summarize([])
                print(f"{name:20s} {size.label:>6s} {size.columns:5d} {'skip':>9s}  (> limit at {timed_out_at} "
                      "columns)", flush=True)
                continue
            outs = []
            for case in cases[size.label]:
                o = run_one(name, case, limit_for(size, limits))
                o.services = len(case.observation.topology.services)
                outs.append(o)
                if o.status == "timeout":
                    break  # the other seeds would time out too
            outs += [Outcome("timeout")] * (len(cases[size.label]) - len(outs))
            s = summarize(outs)
            results[(name, size.label)] = s
            note = "; ".join(sorted(set(s["errors"])))[:150]
            peak = "–" if s["peak_mb"] is None else f"{s['peak_mb']:.0f}"
            print(f"{name:20s} {size.label:>6s} {size.columns:5d} {s['cell']:>9s} {peak:>8s} {s['ac1']:5.2f} "
                  f"{s['avg5']:5.2f} {s['rank_pct']:5.2f}  {note}", flush=True)
            if s["timeouts"]:
                timed_out_at = size.columns

    ref: dict[tuple[str, str], float | str | None] = {}
    if args.rcaeval:
        ref = rcaeval_times(names, cases, sizes, limits, args.venv, args.out)

    header = ["method"] + [f"{s.label}{'' if s.planted else f' ({s.columns})'}" for s in sizes] + ["exponent"]
    rows = []
    planted_sizes = [s for s in sizes if s.planted]
    for name in names:
        cells = []
        for s in sizes:
            r = results[(name, s.label)]
            cell = r["cell"]
            if (name, s.label) in ref:
                cell += f" (RCAEval {_fmt_s(ref[(name, s.label)])})"
            cells.append(cell)
        exp = growth_exponent([s.columns for s in planted_sizes if results[(name, s.label)]["seconds"]],
                              [results[(name, s.label)]["seconds"] for s in planted_sizes
                               if results[(name, s.label)]["seconds"]])
        rows.append([name, *cells, "–" if exp is None else f"{exp:.2f}"])
    print("\n## time per case (median s) vs metric columns; exponent = log-log slope over the planted sizes")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))))
    for r in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    print("\n## accuracy (service level, AC@1 / Avg@5 / rank%) per size")
    for name in names:
        parts = [f"{s.label} {results[(name, s.label)]['ac1']:.2f}/{results[(name, s.label)]['avg5']:.2f}"
                 f"/{results[(name, s.label)]['rank_pct']:.2f}"
                 for s in sizes if results[(name, s.label)]["cell"] != "skip"]
        print(f"{name:20s} " + ", ".join(parts))
    if args.markdown:
        md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(r) + " |" for r in rows]
        acc_header = ["method"] + header[1:-1]
        md += ["", "| " + " | ".join(acc_header) + " |", "|" + "---|" * len(acc_header)]
        for name in names:
            cells = [f"{results[(name, s.label)]['ac1']:.2f} / {results[(name, s.label)]['avg5']:.2f} / "
                     f"{results[(name, s.label)]['rank_pct']:.2f}"
                     if results[(name, s.label)]["cell"] not in ("skip", "error") else results[(name, s.label)]["cell"]
                     for s in sizes]
            md.append("| " + " | ".join([name, *cells]) + " |")
        args.markdown.write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
