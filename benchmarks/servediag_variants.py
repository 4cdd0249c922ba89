"""servediag against the best of the published methods on scenario variants it was not developed on.

    python benchmarks/servediag_variants.py [--out bench-variants] [--reps 1] [--jobs 1]
                                            [--methods servediag,baro,nsigma,mm-baro,pdiagnose,microrank]
                                            [--scenarios paper,llm] [--only NAME,...] [--views full]
                                            [--seed N]

One `llmrca bench` per (scenario, variant) into OUT/<scenario>-<variant> (resumed when it exists), then one table
per scenario: AC@1 of every method per variant with a 95 % bootstrap interval over the cases, the best
other method, and servediag's margin over it, plus servediag's diagnosis accuracy. The variants change one thing
each (the scenario keys of docs/scenarios.md): replica counts 2 and 8, loads 2 and 20 req/s, H100 and L4 GPUs,
exact instead of Istio-bucketed mesh quantiles, bursty arrivals, half-strength faults, background noise off. The
suites use the scenario's own seed (0): servediag's thresholds were set on seed-9101 suites of the shipped
scenarios only (see ``llmrca.methods.servediag``). Writes OUT/variants.md (``--table-only``: from the folders
already there, without running anything).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pandas as pd
from rich.console import Console

from llmrca.bench import run_bench
from llmrca.errors import LlmrcaError
from llmrca.evaluate import load_results
from llmrca.report.ci import bootstrap_mean_ci

VARIANTS: dict[str, list[str]] = {
    "replicas-2": ["deployment.replicas=2"],
    "replicas-8": ["deployment.replicas=8", "deployment.gpus_per_node=2"],
    "rate-2": ["workload.rate=2.0"],
    "rate-20": ["workload.rate=20.0"],
    "h100": ["deployment.gpu=h100"],
    "l4": ["deployment.gpu=l4"],
    "mesh-exact": ["telemetry.mesh_quantiles=exact"],
    "bursty": ["workload.arrival=bursty"],
    "half-strength": ["faults.strength=0.5"],
    "noise-off": ["noise.level=none"],
}
TARGET = "servediag"


def _table(rows: list[dict[str, object]], scenario: str) -> str:
    df = pd.DataFrame(rows)
    methods = list(dict.fromkeys(df["method"]))
    lines = [f"### {scenario}", "", "| variant | cases | " + " | ".join(methods) +
             " | best other | margin | servediag diagnosis |", "|" + "---|" * (len(methods) + 5)]
    for variant, part in df.groupby("variant", sort=False):
        cell = {r["method"]: r for _, r in part.iterrows()}
        others = {m: float(cell[m]["ac1"]) for m in methods if m != TARGET and m in cell}
        best = max(others, key=lambda m: others[m]) if others else None
        own = float(cell[TARGET]["ac1"]) if TARGET in cell else float("nan")
        margin = own - others[best] if best else float("nan")
        fmt = [f"{float(cell[m]['ac1']):.2f} ({float(cell[m]['lo']):.2f}–{float(cell[m]['hi']):.2f})"
               if m in cell else "–" for m in methods]
        diag = cell[TARGET]["diag"] if TARGET in cell else float("nan")
        lines.append(f"| {variant} | {int(part['n'].max())} | " + " | ".join(fmt) +
                     f" | {best} {others.get(best, float('nan')):.2f} | {margin:+.2f} | {float(diag):.2f} |")
    return "\n".join(lines) + "\n"


def collect(folder: Path, view: str, methods: list[str], variant: str) -> list[dict[str, object]]:
    """Per method: AC@1 over the folder's single-fault cases with a 95 % bootstrap interval over cases (one
    repetition per experiment leaves nothing to stratify), and servediag's diagnosis accuracy."""
    res = load_results(folder / f"results-{view}")
    res = res[(res["fault_type"] != "normal") & res["method"].isin(methods)]
    rows = []
    for m, d in res.groupby("method", sort=False):
        hits = (d["rank"] == 1).fillna(False).to_numpy(dtype=float)  # no ranking (error, no answer): a miss
        lo, hi = bootstrap_mean_ci(hits)
        diag = float((d["diagnosis"].astype(object) == d["fault_kind"].astype(object)).mean()) \
            if d["diagnosis"].notna().any() else float("nan")
        rows.append({"variant": variant, "method": m, "ac1": float(hits.mean()), "lo": float(lo), "hi": float(hi),
                     "n": len(d), "diag": diag})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench-variants"))
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--methods", default="servediag,baro,nsigma,mm-baro,pdiagnose,microrank")
    ap.add_argument("--scenarios", default="paper,llm")
    ap.add_argument("--only", default="", help="comma list of variant names (default: all)")
    ap.add_argument("--views", default="full")
    ap.add_argument("--seed", type=int, default=None,
                    help="the suites' seed (default: the scenario's own, 0); another seed gives variants nobody "
                         "has looked at")
    ap.add_argument("--table-only", action="store_true", help="only rebuild variants.md from the folders there")
    a = ap.parse_args()
    only = [v for v in a.only.split(",") if v] or list(VARIANTS)
    methods = [m for m in a.methods.split(",") if m]
    view = a.views.split(",")[-1]
    quiet = Console(file=io.StringIO())
    parts = []
    for scenario in a.scenarios.split(","):
        rows: list[dict[str, object]] = []
        for variant in only:
            folder = a.out / f"{scenario}-{variant}"
            if a.table_only:
                if (folder / f"results-{view}").exists():
                    rows += collect(folder, view, methods, variant)
                continue
            sets = [*VARIANTS[variant], "normal=0", "faults.multi=0"] + ([f"seed={a.seed}"] if a.seed is not None
                                                                       else [])
            try:
                res = run_bench(scenario, folder, reps=a.reps, jobs=a.jobs, methods=a.methods,
                                views=a.views.split(","), full_methods=a.methods, sets=sets, progress=False,
                                console=quiet)
            except LlmrcaError as e:  # e.g. a fault the variant leaves without an effect: the suite cannot exist
                print(f"{scenario} {variant}: skipped: {e}", flush=True)
                continue
            rows += collect(folder, view, methods, variant)
            print(f"{scenario} {variant}: {res.cases} cases, {res.seconds:.0f} s", flush=True)
            # written after every variant, so a long run can be read while it goes on
            (a.out / "variants.md").write_text("\n".join([*parts, _table(rows, scenario)]), encoding="utf-8")
        if rows:
            parts.append(_table(rows, scenario))
    text = "\n".join(parts)
    (a.out / "variants.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
