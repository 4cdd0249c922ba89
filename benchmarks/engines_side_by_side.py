"""One scenario on three engines: the real vLLM engine on the live testbed, the emulated engine on the live testbed,
and the simulator; the same RCA methods on each, AC@1 / AC@3 / Avg@5 per fault side by side.

    PYTHONPATH=src python benchmarks/engines_side_by_side.py --scenario live-vllm --reps 2 --out runs/engines
    python benchmarks/engines_side_by_side.py --out runs/engines --only report     # the table again

The two live campaigns run one after the other (the machine has too few cores for both at once) with the
scenario's faults, targets and timing; the simulator then generates the real campaign's own ``scenario.toml``
(the deployment, timing, faults and targets it ran) with ``--sim-reps`` repetitions. Every phase resumes: a case
folder or a result row already there is kept. Writes ``<out>/table.md`` and ``<out>/table.json``; docs/testbed.md
("Real engine, emulated engine, simulator") holds the published run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

METHODS = ("baro", "nsigma", "e-diagnosis", "circa", "rcd", "pdiagnose", "dummy")
ENGINES = ("vllm", "emulated")
VIEWS = ("study", "full")


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def campaign(out: Path, scenario: str, engine: str, reps: int, sets: list[str]) -> Path:
    from llmrca.scenarios import load
    from llmrca.testbed.campaign import Timing, run_campaign
    from llmrca.testbed.config import TestbedConfig

    sc = load(scenario, [*sets, f'deployment.engine="{engine}"'])
    folder = out / engine
    t0 = time.time()
    run_campaign(folder, suite=sc.name, reps=reps, faults=list(sc.faults),
                 targets=list(sc.targets) if sc.targets else None, timing=Timing.of(sc.deploy),
                 config=TestbedConfig(deploy=sc.deploy, seed=sc.seed), run_dir=out / f"run-{engine}",
                 progress=lambda s: say(f"{engine}: {s}"))
    say(f"{engine}: campaign done in {time.time() - t0:.0f} s")
    return folder


def simulate(out: Path, reps: int) -> Path:
    from llmrca.sim.suites import generate_suite

    src = out / "vllm" / "scenario.toml"
    if not src.is_file():
        src = out / "emulated" / "scenario.toml"
    if not src.is_file():
        raise SystemExit(f"no campaign scenario under {out} (vllm/ or emulated/scenario.toml): run the campaigns first")
    folder = out / "sim"
    generate_suite(str(src), folder, reps=reps, progress=False)
    return folder


def evaluate(out: Path, suites: list[str], jobs: int) -> None:
    from llmrca.evaluate import evaluate as run
    from llmrca.io import find_cases

    for name in suites:
        cases = find_cases(out / name)
        if not cases:
            raise SystemExit(f"no case folders under {out / name}")
        for view in VIEWS:
            say(f"evaluating {name}: {len(cases)} cases, {view} view")
            run(cases, list(METHODS), out / "results" / f"{name}-{view}", jobs=jobs, view=view,
                progress=False, timeout=300.0, root=out / name)


def table(out: Path, suites: list[str]) -> str:
    from llmrca.report import summarize

    cells: dict[tuple[str, str, str, str], str] = {}
    record: dict[str, dict] = {}
    faults: list[str] = []
    for name in suites:
        for view in VIEWS:
            folder = out / "results" / f"{name}-{view}"
            if not folder.is_dir():
                continue
            s = summarize(folder, chance=True)
            record[f"{name}-{view}"] = json.loads(s.to_json(orient="records"))
            for _, r in s.iterrows():
                f = str(r["fault_type"])
                if f not in faults:
                    faults.append(f)
                cells[(str(r["method"]), f, name, view)] = (f"{r['ac1']:.2f} / {r['ac3']:.2f} / {r['avg5']:.2f}"
                                                            f" (n={int(r['n'])})")
    cols = [(n, v) for n in suites for v in VIEWS]
    head = "| method | fault | " + " | ".join(f"{n}, {v} view" for n, v in cols) + " |"
    lines = [head, "|" + "---|" * (2 + len(cols))]
    for m in (*METHODS, "chance"):
        for f in faults:
            row = [cells.get((m, f, n, v), "-") for n, v in cols]
            if all(c == "-" for c in row):
                continue
            lines.append(f"| {m} | {f} | " + " | ".join(row) + " |")
    md = "\n".join(lines) + "\n"
    (out / "table.md").write_text(md, encoding="utf-8")
    (out / "table.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return md


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="live-vllm")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE change to the scenario")
    ap.add_argument("--reps", type=int, default=2, help="repetitions per (fault, target) of each live campaign")
    ap.add_argument("--sim-reps", type=int, default=5, help="repetitions per (fault, target) in the simulator")
    ap.add_argument("--engines", default=",".join(ENGINES), help="live engines to run, in order")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", choices=("campaigns", "sim", "evaluate", "report"), default=None)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    engines = [e for e in a.engines.split(",") if e]
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        raise SystemExit(f"--engines: unknown {', '.join(bad)}; known: {', '.join(ENGINES)}")
    a.out.mkdir(parents=True, exist_ok=True)
    suites = [e for e in ENGINES if (a.out / e).is_dir() or e in engines] + ["sim"]
    if a.only in (None, "campaigns"):
        for e in engines:
            campaign(a.out, a.scenario, e, a.reps, a.sets)
    if a.only in (None, "sim"):
        simulate(a.out, a.sim_reps)
    present = [s for s in suites if (a.out / s).is_dir()]
    if a.only in (None, "evaluate"):
        evaluate(a.out, present, a.jobs)
    print(table(a.out, present))


if __name__ == "__main__":
    main()
