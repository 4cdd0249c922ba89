"""Side by side with the reference implementation: llmrca's methods vs RCAEval 1.8.1's on the same cases.

    python benchmarks/vs_rcaeval.py [--reps 1] [--cases N] [--methods default|all|a,b] [--timeout 300]
                                    [--view study] [--out vs-rcaeval] [--venv benchmarks/.rcaeval-venv]

What it does, in order (every step reuses what an earlier run left in ``--out`` / ``--venv``):

1. **Reference environment.** Creates ``--venv`` (a virtual environment of its own, default
   ``benchmarks/.rcaeval-venv``; RCAEval is never a dependency of llmrca) and installs ``rcaeval==1.8.1``
   without its ``default`` extra (~200 pins), plus only what the compared methods import, pinned (see
   ``REFERENCE_PACKAGES``). ``torch==2.13.0`` (CausalRCA) is skipped with ``--no-torch``. The install is
   recorded in ``<venv>/vs-rcaeval.json`` and not repeated while the package list is unchanged.
2. **Cases.** Simulates the paper suite (``llmrca generate --suite paper --reps N``: 4 faults × 4 replicas × N),
   or takes ``--suite DIR``; ``--cases N`` keeps N of them, one fault after another.
3. **Export.** Writes each case with ``llmrca.io.rcaeval.write_case`` (what ``llmrca export --format rcaeval``
   does) into ``<out>/rcaeval/<service>_<fault>/<rep>/``, with the metric view ``--view`` (``study``, the
   reference study's 33 columns, by default; ``all`` = every exported series).
4. **Ours.** Runs our methods with the grid runner (``llmrca.evaluate.evaluate``, one worker, ``--timeout`` per
   task) on those RCAEval folders, read back by llmrca's RCAEval reader: what ``llmrca evaluate <out>/rcaeval``
   runs. Time = wall time of ``rank()``. CPU time: afterwards, in this process, every method's ``rank()`` once
   more per case that the runner completed (a ranking or a no-answer), on the same observation (read by the same reader) with the same
   seed, ``time.process_time`` around the call; one untimed call per method first, so that its lazy imports
   are not counted (the reference imports its module before timing too).
5. **Reference.** Runs RCAEval's function for the same method on the same folders through
   ``benchmarks/vs_rcaeval_driver.py`` in the reference environment (one process per method; see its
   docstring for how it loads a case, which follows RCAEval's own ``main.py``). Time = wall time of the call;
   CPU time = ``time.process_time`` around the same call.
   The SLI handed to RCAEval (MicroCause uses it) is ours: the entry service's latency, never the root cause's.
6. **Scores.** Per method, service level (a candidate's service is the part before the first ``_``, for both):
   AC@1, AC@3, Avg@5 of each side, share of cases whose top-1 service is the same, mean seconds per case of
   each side and their ratio (reference / ours), and the same for CPU seconds ("ratio (CPU)"; on a loaded
   machine the wall ratio of calls of a few milliseconds moves with the other jobs, the CPU ratio much less).
   Times are means over the same cases on both sides ("timed cases"): those where both calls ran to their end,
   with a ranking, the method's own empty answer (our no-answer, RCAEval's empty ranking) or RCAEval's fallback
   to the column order; a crash or a timeout on either side leaves the case out of both means. The run's first
   case is left out of both (when there are several): it is each side's first call of the method in its process
   (our grid worker runs every method; the reference one process per method), which also pays the one-time
   set-up of the libraries the method uses — causal-learn's lazy imports, Arrow's and BLAS's first calls: 75 ms
   against a steady 19 ms for our fci-pagerank when it runs first in the worker — so a method's time would
   otherwise depend on its place in the method list. (Before 2026-12-08 each side's mean was over its own
   ranked cases, first case included: different cases where one side abstains often.)
   A failure, a timeout, or RCAEval's fallback to the unranked
   column order counts as a miss. Printed, and written to ``<out>/results.md`` and ``<out>/results.json``
   (with every case's ranks and statuses).

Threads: both sides run with one BLAS/OpenMP thread (and one torch thread), one case at a time.
``--methods default`` leaves out ``microcause`` and ``causalrca`` (about 70 s and 120 s per case in the reference
on 33 columns, against 1 s and 4 s here); ``--methods all`` runs them. Methods only one side has are listed with
the reason. Results, and why they differ, are in ``docs/vs-rcaeval.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "vs_rcaeval_driver.py"
RCAEVAL = "rcaeval==1.8.1"
DATASET = "re2-ob"  # the `dataset` RCAEval's functions get: any RE2 name selects its generic preprocessing
LENGTH = 20  # RCAEval main.py's default --length (minutes): 600 metric rows each side of the injection
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")

# What RCAEval's compared method modules import (read from the 1.8.1 wheel), pinned to versions that run
# them. RCAEval's `default` extra asks numpy<2 and networkx 2.5 on Python < 3.13; torch 2.13.0 needs
# networkx >= 2.5.1, and 2.8.8 is the last networkx with `nx.adj_matrix` (MicroCause calls it).
BUILD_PACKAGES = ["setuptools>=77.0.3,<81", "wheel", "cython<3", "numpy==1.26.4"]
REFERENCE_PACKAGES = [
    RCAEVAL, "numpy==1.26.4", "pandas==2.2.3", "scipy==1.13.1", "scikit-learn==1.5.2", "networkx==2.8.8",
    "statsmodels==0.14.4", "causal-learn==0.1.4.8", "scikit-network==0.33.5", "pingouin==0.6.1",
    "matplotlib", "requests", "tqdm", "python-dateutil", "pyyaml", "dill", "setuptools>=77.0.3,<81",
]
# MicroCause calls PCMCI.return_significant_links, which tigramite 5 turned into a stub returning None; 4.2.2.1
# (RCAEval's `rcd` extra pins it) still has it. Its sdist builds with Cython < 3 and the numpy above.
TIGRAMITE = "tigramite==4.2.2.1"
# ε-Diagnosis comes from Salesforce PyRCA; its declared dependencies include javabridge (a Java build) and
# scikit-learn < 1.2, none of which its epsilon_diagnosis module imports: install it alone.
PYRCA = "sfr-pyrca==1.0.1"
TORCH = "torch==2.13.0"

# llmrca method -> (RCAEval module, function, input). Every method both implementations have.
PAIRS: dict[str, tuple[str, str, str]] = {
    "dummy": ("RCAEval.e2e", "dummy", "metrics"),
    "baro": ("RCAEval.e2e.baro", "baro", "metrics"),
    "nsigma": ("RCAEval.e2e", "nsigma", "metrics"),
    "e-diagnosis": ("RCAEval.e2e", "e_diagnosis", "metrics"),
    "circa": ("RCAEval.e2e.circa", "circa", "metrics"),
    "rcd": ("RCAEval.e2e.rcd", "rcd", "metrics"),
    "pc-pagerank": ("RCAEval.e2e.pc_pagerank", "pc_pagerank", "metrics"),
    "pc-randomwalk": ("RCAEval.e2e.pc_randomwalk", "pc_randomwalk", "metrics"),
    "fci-pagerank": ("RCAEval.e2e.fci_pagerank", "fci_pagerank", "metrics"),
    "fci-randomwalk": ("RCAEval.e2e.pc_randomwalk", "fci_randomwalk", "metrics"),
    "granger-pagerank": ("RCAEval.e2e.granger_pagerank", "granger_pagerank", "metrics"),
    "granger-randomwalk": ("RCAEval.e2e.pc_randomwalk", "granger_randomwalk", "metrics"),
    "lingam-pagerank": ("RCAEval.e2e.lingam_pagerank", "lingam_pagerank", "metrics"),
    "lingam-randomwalk": ("RCAEval.e2e.pc_randomwalk", "lingam_randomwalk", "metrics"),
    "microcause": ("RCAEval.e2e.microcause", "microcause", "metrics"),
    "causalrca": ("RCAEval.e2e.causalrca", "causalrca", "metrics"),
    "tracerca": ("RCAEval.e2e.tracerca", "tracerca", "traces"),
    "microrank": ("RCAEval.e2e.microrank", "microrank", "traces"),
    "mm-baro": ("RCAEval.e2e.baro", "mmbaro", "multi-source"),
}
SLOW = ("microcause", "causalrca")  # left out of --methods default
# Methods of ours without a runnable counterpart in RCAEval 1.8.1, and why.
UNPAIRED = {
    "causalai": "RCAEval.e2e.causalai imports Salesforce CausalAI (`causalai`), which is not on PyPI",
    "pdiagnose": "RCAEval 1.8.1 has PDiagnose only as a script (main() in RCAEval/e2e/pdiagnose.py reads a "
                 "fixed ./data/mm-ob/... case and prints), no callable method",
    "microrca": "not in RCAEval 1.8.1 (RCAEval.e2e has no MicroRCA)",
    "microscope": "not in RCAEval 1.8.1 (RCAEval.e2e has no MicroScope)",
    "monitorrank": "not in RCAEval 1.8.1 (RCAEval.e2e has no MonitorRank)",
}


# ---------------------------------------------------------------------------------------------- environment

def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _pip(python: Path, args: list[str], what: str) -> bool:
    print(f"  pip install {what}", flush=True)
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                       check=False, capture_output=True, text=True)
    if r.returncode:
        tail = "\n    ".join((r.stdout + r.stderr).strip().splitlines()[-6:])
        print(f"  ! failed ({what}):\n    {tail}", flush=True)
    return r.returncode == 0


def ensure_reference_env(venv: Path, *, torch: bool) -> dict[str, Any]:
    """Create/complete the RCAEval environment; return what is installed. Idempotent."""
    wanted = {"rcaeval": RCAEVAL, "packages": REFERENCE_PACKAGES, "tigramite": TIGRAMITE, "pyrca": PYRCA,
              "torch": TORCH if torch else None}
    marker = venv / "vs-rcaeval.json"
    python = _venv_python(venv)
    if marker.is_file() and python.exists():
        have = json.loads(marker.read_text())
        if {k: have.get(k) for k in wanted} == wanted:
            return have
    t0 = time.perf_counter()
    print(f"setting up the RCAEval environment in {venv} (once)", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if not _pip(python, BUILD_PACKAGES, "build tools"):
        raise SystemExit("cannot install the build tools into the RCAEval environment")
    packages = REFERENCE_PACKAGES + ([TORCH] if torch else [])
    if not _pip(python, packages, f"{RCAEVAL} + {len(packages) - 1} packages"):
        raise SystemExit("cannot install RCAEval and its method dependencies (see pip's message above)")
    status = dict(wanted)
    status["tigramite_ok"] = _pip(python, ["--no-build-isolation", TIGRAMITE, "numpy==1.26.4"], TIGRAMITE)
    status["pyrca_ok"] = _pip(python, ["--no-deps", PYRCA], f"{PYRCA} (no dependencies)")
    marker.write_text(json.dumps(status, indent=2) + "\n")
    print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    return status


# -------------------------------------------------------------------------------------------------- cases

def sample_cases(case_dirs: list[Path], n: int | None) -> list[Path]:
    """Up to ``n`` cases, one fault type after another (round robin over the sorted fault folders); the k-th
    fault starts at its k-th case, so that a small sample also spreads over the targets."""
    if n is None or n >= len(case_dirs):
        return case_dirs
    by_fault: dict[str, list[Path]] = defaultdict(list)
    for d in case_dirs:
        by_fault[d.parent.parent.name if d.parent.parent else ""].append(d)
    picked: list[Path] = []
    queues = [v[k % len(v):] + v[:k % len(v)] for k, (_, v) in enumerate(sorted(by_fault.items()))]
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return sorted(picked)


def prepare_cases(args: argparse.Namespace, out: Path) -> tuple[Path, list[dict[str, Any]]]:
    """Simulate (or take) the suite, export the sample to RCAEval folders; return the export root and cases."""
    from llmrca.io import find_cases, load_case
    from llmrca.io.rcaeval import case_id, write_case

    settings = {"suite": str(args.suite) if args.suite else f"paper reps={args.reps} seed={args.seed}",
                "cases": args.cases, "view": args.view}
    settings_file = out / "cases.json"
    rc_root = out / "rcaeval"
    if settings_file.is_file() and json.loads(settings_file.read_text()).get("settings") != settings:
        raise SystemExit(f"{out} holds cases made with other settings ({settings_file}); use another --out or "
                         "--fresh")
    if not (settings_file.is_file() and rc_root.is_dir()):
        if args.suite:
            suite = Path(args.suite)
        else:
            from llmrca.sim import generate_suite

            suite = out / "suite"
            if not suite.is_dir() or not find_cases(suite):
                print(f"simulating the paper suite, {args.reps} rep(s) → {suite}", flush=True)
                generate_suite("paper", suite, reps=args.reps, seed=args.seed, jobs=1, progress=False)
        picked = sample_cases(find_cases(suite), args.cases)
        if rc_root.exists():
            shutil.rmtree(rc_root)
        print(f"exporting {len(picked)} case(s) in RCAEval's layout ({args.view} view) → {rc_root}", flush=True)
        for d in picked:
            case = load_case(d)
            if args.view != "all":
                from llmrca.case.views import select_view

                case = select_view(case, args.view)
            write_case(case, rc_root)
        settings_file.write_text(json.dumps({"settings": settings}, indent=2) + "\n")
    from llmrca.errors import MethodError
    from llmrca.methods.sli import sli_column

    cases = []
    for d in find_cases(rc_root):
        case = load_case(d, root=rc_root)
        try:
            sli = sli_column(case.observation)
        except MethodError:
            sli = None
        cases.append({"id": case_id(d, rc_root), "dir": str(d), "truth": case.truth.service,
                      "fault": case.truth.fault_type, "sli": sli, "columns": len(case.observation.metric_columns)})
    return rc_root, cases


# --------------------------------------------------------------------------------------------- both sides

def run_ours(methods: list[str], cases: list[dict[str, Any]], rc_root: Path, out: Path, args) -> dict:
    """(method, case_id) -> {status, seconds, services (top 5)} from llmrca's grid runner."""
    import pandas as pd

    from llmrca.evaluate import evaluate

    print(f"ours: {len(methods)} method(s) × {len(cases)} case(s) with llmrca's runner", flush=True)
    t0 = time.perf_counter()
    rows = evaluate([c["dir"] for c in cases], methods, out / "ours", jobs=1, timeout=args.timeout,
                    seed=args.seed, root=rc_root, progress=False)
    print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    res = {}
    for r in rows.to_dict("records"):
        top5 = r.get("top5")
        services = json.loads(top5) if isinstance(top5, str) else []
        secs = r.get("runtime_s")
        rank = r.get("rank")
        res[(r["method"], r["case_id"])] = {
            "status": r["status"], "seconds": None if pd.isna(secs) else float(secs),
            "services": services, "rank": None if pd.isna(rank) else int(rank)}
    return res


def run_ours_cpu(methods: list[str], cases: list[dict[str, Any]], rc_root: Path, out: Path, ours: dict,
                 seed: int) -> dict:
    """(method, case_id) -> CPU seconds of our ``rank()`` (see the module docs, step 4), for every case the
    runner completed (a ranking or a no-answer). Kept in ``<out>/ours_cpu.json`` and reused."""
    from llmrca.errors import NoAnswer
    from llmrca.evaluate.sealed import isolated
    from llmrca.io import load_case
    from llmrca.methods import get_method

    store = out / "ours_cpu.json"
    done = {tuple(k.split("\t")): v for k, v in json.loads(store.read_text()).items()} if store.is_file() else {}
    todo = [(m, c) for c in cases for m in methods
            if (m, c["id"]) not in done and _completed(ours.get((m, c["id"]), {}).get("status", ""), "ours")]
    if not todo:
        return done
    print(f"ours, CPU time: {len(todo)} call(s) in this process", flush=True)
    t0 = time.perf_counter()
    need = {c["id"] for _, c in todo}
    obs_of = {c["id"]: load_case(c["dir"], root=rc_root).observation for c in cases if c["id"] in need}
    warm: set[str] = set()
    for m, c in todo:
        method = get_method(m)
        obs = obs_of[c["id"]]
        if m not in warm:  # lazy imports and first-call set-up of the libraries, not the method's work
            warm.add(m)
            try:
                method.rank(isolated(obs), seed=seed)
            except Exception:  # noqa: BLE001, S110 - the timed call below reports nothing either way
                pass
        view = isolated(obs)
        c0 = time.process_time()
        try:
            method.rank(view, seed=seed)
            done[(m, c["id"])] = time.process_time() - c0
        except NoAnswer:  # the method's own conclusion, as in the runner: a completed call
            done[(m, c["id"])] = time.process_time() - c0
        except Exception:  # noqa: BLE001 - the runner answered; a different outcome here is not timed
            done[(m, c["id"])] = None
    store.write_text(json.dumps({f"{m}\t{cid}": v for (m, cid), v in done.items()}, indent=1) + "\n")
    print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    return done


def _services(ranks: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for c in ranks:
        seen.setdefault(str(c).split("_", 1)[0], None)
    return list(seen)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_reference(method: str, cases: list[dict[str, Any]], venv: Path, out: Path, args) -> dict:
    """case_id -> {status, seconds, ranks, services} from RCAEval, run by the driver in the reference venv."""
    module, function, kind = PAIRS[method]
    ref_dir = out / "reference"
    ref_dir.mkdir(parents=True, exist_ok=True)
    lines_file = ref_dir / f"{method}.jsonl"
    done: dict[str, dict] = {}
    if lines_file.is_file():
        for line in lines_file.read_text().splitlines():
            row = json.loads(line)
            done[row["case_id"]] = row
    todo = [c for c in cases if c["id"] not in done]
    if todo:
        job = {"method": method, "module": module, "function": function, "input": kind, "dataset": DATASET,
               "length": LENGTH, "seed": args.seed, "timeout": args.timeout, "out": str(lines_file),
               "cases": [{"id": c["id"], "dir": c["dir"], "sli": c["sli"]} for c in todo]}
        job_file = ref_dir / f"{method}.job.json"
        job_file.write_text(json.dumps(job, indent=2))
        env = dict(os.environ, **{v: "1" for v in THREAD_VARS}, PYTHONWARNINGS="ignore")
        env.pop("PYTHONPATH", None)
        hard_limit = args.timeout * len(todo) + 120  # the driver's own alarm should fire long before
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(_venv_python(venv)), str(DRIVER), str(job_file)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=hard_limit)
            failure = f"error: driver exited {proc.returncode}: {' '.join(err.split()[-40:])}" if proc.returncode \
                else "error: the driver wrote no result"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            failure = "timeout"
        if lines_file.is_file():
            for line in lines_file.read_text().splitlines():
                row = json.loads(line)
                done[row["case_id"]] = row
        for c in todo:
            done.setdefault(c["id"], {"case_id": c["id"], "status": failure[:600], "seconds": None, "ranks": []})
        print(f"  reference {method}: {len(todo)} case(s) in {time.perf_counter() - t0:.0f} s", flush=True)
    for row in done.values():
        row["services"] = _services(row.get("ranks") or [])
    return done


# ----------------------------------------------------------------------------------------------- scoring

def _rank(services: list[str], truth: str | None, ok: bool) -> int | None:
    if not ok or truth is None or truth not in services:
        return None
    return services.index(truth) + 1


def _mean(xs: list[float]) -> float | None:
    return statistics.mean(xs) if xs else None


def _completed(status: str, side: str) -> bool:
    """A call that ran to its end and gave its answer: a ranking, or the method's own "nothing to blame" (our
    no-answer, RCAEval's empty ranking), or RCAEval's fallback to the column order (it caught its own failure and
    returned). Errors and timeouts are not timed."""
    if status == "ok":
        return True
    if side == "ours":
        return status.startswith("no-answer")
    return status.startswith(("fallback", "error: empty ranking"))


def score(method: str, cases: list[dict[str, Any]], ours: dict, ref: dict, ours_cpu: dict | None = None
          ) -> dict[str, Any]:
    from llmrca.evaluate import ac_at_k, avg_at_k

    per_case = []
    r_ours, r_ref, same, t_ours, t_ref, c_ours, c_ref = [], [], 0, [], [], [], []
    no_ours: dict[str, int] = defaultdict(int)
    no_ref: dict[str, int] = defaultdict(int)
    for i, c in enumerate(cases):
        o = ours.get((method, c["id"]), {"status": "error: not run", "seconds": None, "services": []})
        f = ref.get(c["id"], {"status": "error: not run", "seconds": None, "services": []})
        o_ok, f_ok = o["status"] == "ok", f["status"] == "ok"
        ro = o.get("rank") if o_ok else None  # the runner's service rank of the truth
        rf = _rank(f["services"], c["truth"], f_ok)
        r_ours.append(ro)
        r_ref.append(rf)
        top_o = o["services"][0] if o_ok and o["services"] else None
        top_f = f["services"][0] if f_ok and f["services"] else None
        same += top_o is not None and top_o == top_f
        # Times are compared on the same cases: those where both sides' calls ran to their end (see _completed),
        # but not the run's first case: each side's first call of a method in its process also pays the one-time
        # set-up of the libraries it uses (lazy imports, Arrow's and BLAS's first calls), not work on the case
        o_timed, f_timed = _completed(o["status"], "ours"), _completed(f["status"], "reference")
        if i == 0 and len(cases) > 1:
            o_timed = f_timed = False
        cpu_o = (ours_cpu or {}).get((method, c["id"])) if o_timed else None
        if o_timed and f_timed and o["seconds"] is not None and f.get("seconds") is not None:
            t_ours.append(o["seconds"])
            t_ref.append(f["seconds"])
        if o_timed and f_timed and cpu_o is not None and f.get("cpu_seconds") is not None:
            c_ours.append(cpu_o)
            c_ref.append(f["cpu_seconds"])
        if not o_ok:
            no_ours[o["status"].split(":")[0] if o["status"] != "timeout" else "timeout"] += 1
        if not f_ok:
            no_ref[f["status"].split(":")[0]] += 1
        per_case.append({"case_id": c["id"], "truth": c["truth"], "fault": c["fault"],
                         "ours": {"status": o["status"], "seconds": o["seconds"], "cpu_seconds": cpu_o, "rank": ro,
                                  "top5": o["services"][:5]},
                         "reference": {"status": f["status"], "seconds": f.get("seconds"),
                                       "cpu_seconds": f.get("cpu_seconds"), "rank": rf,
                                       "top5": f["services"][:5], "ranks": f.get("ranks", [])}})
    n = len(cases)
    mo, mf = _mean(t_ours), _mean(t_ref)
    co, cf = _mean(c_ours), _mean(c_ref)
    messages: dict[str, dict[str, int]] = {"ours": defaultdict(int), "reference": defaultdict(int)}
    for pc in per_case:
        for side in ("ours", "reference"):
            st = pc[side]["status"]
            if st != "ok":
                messages[side][st] += 1
    return {
        "method": method, "reference": "{}.{}".format(*PAIRS[method][:2]), "cases": n,
        "ours": {"ac1": ac_at_k(r_ours, 1), "ac3": ac_at_k(r_ours, 3), "avg5": avg_at_k(r_ours, 5),
                 "seconds": mo, "cpu_seconds": co, "no_answer": dict(no_ours)},
        "rcaeval": {"ac1": ac_at_k(r_ref, 1), "ac3": ac_at_k(r_ref, 3), "avg5": avg_at_k(r_ref, 5),
                    "seconds": mf, "cpu_seconds": cf, "no_answer": dict(no_ref)},
        "same_top1": same / n if n else float("nan"),
        "timed_cases": len(t_ours), "timed_cases_cpu": len(c_ours),
        "ratio": mf / mo if mo and mf is not None else None,
        "ratio_cpu": cf / co if co and cf is not None else None,
        "messages": {k: dict(v) for k, v in messages.items()},
        "cases_detail": per_case,
    }


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if x is None or math.isnan(x) else fmt.format(x)


def _secs(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _no(d: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in sorted(d.items())) or "0"


COLUMNS = ["method", "AC@1 ours / RCAEval", "AC@3 ours / RCAEval", "Avg@5 ours / RCAEval", "same top-1",
           "s/case ours", "s/case RCAEval", "ratio", "CPU s/case ours / RCAEval", "ratio (CPU)",
           "no answer ours / RCAEval", "timed cases"]


def _ratio(x: float | None) -> str:
    return _f(x, "{:.0f}×" if (x or 0) >= 10 else "{:.1f}×")


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        o, f = r["ours"], r["rcaeval"]
        rows.append([r["method"], f"{_f(o['ac1'])} / {_f(f['ac1'])}", f"{_f(o['ac3'])} / {_f(f['ac3'])}",
                     f"{_f(o['avg5'])} / {_f(f['avg5'])}", _f(r["same_top1"]), _secs(o["seconds"]),
                     _secs(f["seconds"]), _ratio(r["ratio"]),
                     f"{_secs(o.get('cpu_seconds'))} / {_secs(f.get('cpu_seconds'))}", _ratio(r.get("ratio_cpu")),
                     f"{_no(o['no_answer'])} / {_no(f['no_answer'])}",
                     f"{r.get('timed_cases', 0)}/{r['cases']}"])
    return rows


def print_table(results: list[dict[str, Any]], title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text
        print(title)
        for row in [COLUMNS, *table_rows(results)]:
            print("  ".join(row))
        return
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(COLUMNS):
        t.add_column(c, justify="left" if i in (0, len(COLUMNS) - 1) else "right")
    for row in table_rows(results):
        t.add_row(*row)
    Console(width=200).print(t)


def write_markdown(path: Path, results: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    intro = (f"{meta['n_cases']} case(s) ({meta['case_source']}, {meta['view']} view, {meta['columns']} metric "
             f"columns), seed {meta['seed']}, timeout {meta['timeout']:g} s per call, one thread each side. "
             "Service level; a failure, timeout or RCAEval fallback to the column order counts as a miss. "
             "s/case: mean wall time per case over the timed cases, those where both sides' calls ran to their end "
             "(a ranking, the method's own empty answer, or RCAEval's fallback; not an error or timeout), "
             "except the run's first case (each side's first call also sets up its libraries); "
             "ratio = RCAEval / ours; CPU s/case and ratio (CPU): the same for the CPU time "
             "(`time.process_time`) of the calls.")
    lines = [f"# llmrca vs RCAEval {RCAEVAL.split('==')[1]}", "", intro, "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    lines += ["", "## Not compared", ""]
    lines += [f"- `{m}`: {why}" for m, why in meta["unpaired"].items()]
    lines += ["", "## Failures, timeouts and fallbacks", ""]
    for r in results:
        for side in ("ours", "reference"):
            for msg, k in r["messages"][side].items():
                lines.append(f"- `{r['method']}` ({side}, {k} case(s)): {msg}")
    path.write_text("\n".join(lines) + "\n")


# -------------------------------------------------------------------------------------------------- main

def resolve_methods(spec: str) -> list[str]:
    if spec == "default":
        return [m for m in PAIRS if m not in SLOW]
    if spec == "all":
        return list(PAIRS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [m for m in names if m not in PAIRS]
    if bad:
        why = "; ".join(f"{m}: {UNPAIRED[m]}" if m in UNPAIRED else f"{m}: unknown" for m in bad)
        raise SystemExit(f"cannot compare {why}. Comparable: {', '.join(PAIRS)}")
    return names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Example: python benchmarks/vs_rcaeval.py --reps 1 --methods default")
    ap.add_argument("--reps", type=int, default=1, help="repetitions of the paper suite (16 cases each)")
    ap.add_argument("--seed", type=int, default=0, help="suite seed and the seed of every method call")
    ap.add_argument("--suite", default=None, help="an existing suite folder instead of simulating one")
    ap.add_argument("--cases", type=int, default=None, help="use only this many cases (faults round robin)")
    ap.add_argument("--view", default="study", choices=["study", "full", "all"],
                    help="metric columns exported (study: the reference study's 33)")
    ap.add_argument("--methods", default="default",
                    help=f"default (all but {', '.join(SLOW)}), all, or a comma list of: {', '.join(PAIRS)}")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per method call, either side")
    ap.add_argument("--out", default="vs-rcaeval", help="folder for cases, raw results and the report")
    ap.add_argument("--venv", default=str(HERE / ".rcaeval-venv"), help="the RCAEval virtual environment")
    ap.add_argument("--no-torch", action="store_true", help="do not install torch (CausalRCA then fails)")
    ap.add_argument("--fresh", action="store_true", help="discard earlier results and cases in --out")
    args = ap.parse_args()
    methods = resolve_methods(args.methods)
    for v in THREAD_VARS:  # inherited by the runner's worker processes
        os.environ[v] = "1"
    out = Path(args.out).resolve()
    if args.fresh and out.exists():
        for sub in ("ours", "ours_cpu.json", "reference", "rcaeval", "suite", "cases.json"):
            p = out / sub
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    venv = Path(args.venv).resolve()
    env_status = ensure_reference_env(venv, torch=not args.no_torch)
    rc_root, cases = prepare_cases(args, out)
    if not cases:
        raise SystemExit("no case to compare")
    ours = run_ours(methods, cases, rc_root, out, args)
    ours_cpu = run_ours_cpu(methods, cases, rc_root, out, ours, args.seed)
    print(f"reference: {len(methods)} method(s) × {len(cases)} case(s) in {venv.name}", flush=True)
    results = []
    for m in methods:
        ref = run_reference(m, cases, venv, out, args)
        results.append(score(m, cases, ours, ref, ours_cpu))

    columns = sorted({c["columns"] for c in cases})
    meta = {"n_cases": len(cases), "view": args.view, "seed": args.seed, "timeout": args.timeout,
            "case_source": args.suite or f"paper suite, {args.reps} rep(s)",
            "columns": "/".join(map(str, columns)), "unpaired": UNPAIRED, "dataset_arg": DATASET,
            "length_arg": LENGTH, "reference_env": env_status, "methods": methods,
            "cases": [{k: c[k] for k in ("id", "truth", "fault", "sli")} for c in cases]}
    title = (f"llmrca vs RCAEval 1.8.1 — {len(cases)} case(s), {args.view} view ({meta['columns']} columns); "
             "service level, misses include failures")
    print()
    print_table(results, title)
    print("not compared: " + "; ".join(f"{m} ({why})" for m, why in UNPAIRED.items()))
    write_markdown(out / "results.md", results, meta)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str) + "\n")
    print(f"wrote {out / 'results.md'} and {out / 'results.json'} ({time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
