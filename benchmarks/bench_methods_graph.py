"""Time and memory of circa, causalrca, microrca, microscope and monitorrank per case.

Cases:
  paper   the simulator's paper deployment (study view: ~34 columns), a CPU fault on ray-replicas-1, run long
          enough (600 s, fault at 300 s) that the method window holds 120 rows;
  wide    a planted-root case with 50 services × 4 metrics = 200 columns, 120 rows in the window, its DAG read
          as a call graph (entry = the sink downstream of the root that most services feed).

Each (method, case) runs in its own process: ``cold`` is the first call (imports, e.g. torch, included),
``warm`` the median wall time of ``--repeat`` further calls and ``cpu`` their median CPU time (closer to the
uncontended wall time on a busy machine, for these single-threaded methods), ``alloc`` the tracemalloc peak
of one warm call (numpy and Python allocations; torch's own buffers are not traced), ``rss`` the process's
peak resident memory. A method that declines a case (MethodError) shows the error and its time to decide.

    python benchmarks/bench_methods_graph.py                  # the five methods, both cases
    python benchmarks/bench_methods_graph.py --all-metric     # every registered metric method on 'paper'

Reference (RCAEval, ASE'24, 64-service Train Ticket, 8 CPUs): CIRCA 3792 s, CausalRCA 1326 s per case.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc

MINE = ["circa", "causalrca", "microrca", "microscope", "monitorrank"]
CASES = ["paper", "wide"]


def build_case(name: str):
    if name == "paper":
        from llmrca.sim import select_view
        from llmrca.sim.run import simulate
        from llmrca.sim.suites import plan

        specs = plan("paper", reps=1, seed=0,
                     overrides={"duration": 600.0, "inject_at": 300.0, "fault_duration": 300.0})
        spec = next(s for s in specs if s.case_id.startswith("cpu/ray-replicas-1/"))
        return select_view(simulate(spec.config, spec.injection, spec.seed, traces=False, logs=False), "study")
    if name == "wide":
        import networkx as nx

        from llmrca.case import Topology
        from llmrca.synthetic import planted_case

        case = planted_case(n_services=50, metrics=("cpu", "mem", "net-rx", "latency"), n_rows=240,
                            inject_row=120, edge_prob=0.08, seed=5)
        t = case.observation.topology
        g = nx.DiGraph(t.edges)
        g.add_nodes_from(t.services)
        root = case.truth.service
        sinks = [n for n in g if g.out_degree(n) == 0 and (n == root or root in nx.ancestors(g, n))]
        entry = max(sinks, key=lambda s: (len(nx.ancestors(g, s)), s))
        return case.with_observation(
            topology=Topology(services=t.services, edges=tuple((b, a) for a, b in t.edges), entry=entry)
        )
    raise SystemExit(f"unknown case {name!r}; known: {', '.join(CASES)}")


def child(method: str, case_name: str, repeat: int) -> dict:
    from llmrca.errors import LlmrcaError
    from llmrca.methods import get_method

    case = build_case(case_name)
    obs = case.observation
    m = get_method(method)
    out: dict = {"method": method, "case": case_name, "columns": len(obs.metric_columns)}
    t0 = time.perf_counter()
    try:
        r = m.rank(obs, seed=0)
    except LlmrcaError as e:  # the method declined the case: its time to decide is still a time
        out["cold_s"] = out["warm_s"] = time.perf_counter() - t0
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    out["cold_s"] = time.perf_counter() - t0
    out["rank"] = r.rank_of(case.truth.service)
    warm, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        m.rank(obs, seed=0)
        warm.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    out["warm_s"] = statistics.median(warm) if warm else out["cold_s"]
    out["cpu_s"] = statistics.median(cpu) if cpu else out["cold_s"]
    tracemalloc.start()
    m.rank(obs, seed=0)
    out["alloc_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    out["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(MINE))
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--all-metric", action="store_true", help="every registered metric method, case 'paper'")
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "CASE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], a.child[1], a.repeat)))
        return
    methods = a.methods.split(",")
    cases = a.cases.split(",")
    if a.all_metric:
        from llmrca.methods import entries

        methods = [e.name for e in entries() if e.family == "metric"]
        cases = ["paper"]
    print(f"{'method':<20}{'case':<7}{'cols':>5}{'cold s':>9}{'warm s':>9}{'cpu s':>8}{'alloc MiB':>11}"
          f"{'rss MiB':>9}{'rank':>6}")
    total = 0.0
    for case in cases:
        for m in methods:
            cmd = [sys.executable, __file__, "--child", m, case, "--repeat", str(a.repeat)]
            res = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{m:<20}{case:<7} failed: {res.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            total += r["warm_s"]
            if "error" in r:
                print(f"{m:<20}{case:<7}{r['columns']:>5}{r['cold_s']:>9.2f}{r['warm_s']:>9.2f}  {r['error']}")
                continue
            print(f"{m:<20}{case:<7}{r['columns']:>5}{r['cold_s']:>9.2f}{r['warm_s']:>9.2f}{r['cpu_s']:>8.2f}"
                  f"{r['alloc_mib']:>11.1f}{r['rss_mib']:>9.0f}{r['rank']!s:>6}")
    print(f"sum of warm times: {total:.1f} s")


if __name__ == "__main__":
    main()
