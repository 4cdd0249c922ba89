"""`llmrca demo`: generate a small simulated suite, evaluate the baseline methods, print and write the report."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from llmrca.errors import LlmrcaError

DEMO_METHODS = ("dummy", "nsigma", "baro", "e-diagnosis")
_MARKER = "demo.json"


@dataclass(frozen=True)
class DemoResult:
    out_dir: Path
    report: Path
    cases: int
    seconds: float


def run_demo(
    out_dir: str | Path = "llmrca-demo",
    *,
    jobs: int = 2,
    seed: int = 0,
    methods: Sequence[str] = DEMO_METHODS,
    view: str = "study",
    console: Console | None = None,
    progress: bool = True,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
) -> DemoResult:
    """Simulate the `demo` suite into OUT/cases, evaluate ``methods`` into OUT/results, write OUT/report.md.

    ``methods``: names or plug-ins' ``module:Class``; ``method_params``: method → parameters (as ``evaluate``).

    The folder is the demo's own: a previous demo folder is replaced; any other existing folder is refused.
    """
    from llmrca.evaluate import evaluate
    from llmrca.methods import resolve
    from llmrca.methods.params import checked_params, describe
    from llmrca.report import print_table, summarize, to_markdown
    from llmrca.sim.suites import generate_suite, get_suite

    console = console or Console()
    methods = resolve(list(methods))  # a wrong name or plug-in is refused before the folder is replaced
    params = checked_params(method_params, methods)
    out = Path(out_dir)
    if out.exists():
        if not (out / _MARKER).is_file():
            raise LlmrcaError(f"{out}: exists and is not a demo folder; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / _MARKER).write_text(json.dumps({"seed": seed, "methods": list(methods), "view": view,
                                           "method_params": params}) + "\n")

    t0 = time.perf_counter()
    suite = get_suite("demo")
    console.print(f"[bold]1/3[/bold] simulating the demo suite: {suite.description}", highlight=False)
    cases = generate_suite("demo", out / "cases", seed=seed, jobs=jobs, progress=progress)
    console.print(f"[bold]2/3[/bold] evaluating {', '.join(methods)} on {len(cases)} cases "
                  f"({view} view, as the study fed its methods)", highlight=False)
    results = evaluate(cases, list(methods), out / "results", jobs=jobs, seed=seed, progress=progress,
                       view=view, root=out / "cases", method_params=params)
    summary = summarize(results)
    console.print("[bold]3/3[/bold] report", highlight=False)
    print_table(summary, console, title=f"RCA accuracy on the simulated demo suite, {view} view ({len(cases)} cases)")
    seconds = time.perf_counter() - t0
    report = out / "report.md"
    report.write_text(
        "# llmrca demo\n\n"
        f"Suite `demo` ({suite.description}), seed {seed}, {len(cases)} cases; methods see the `{view}` view of "
        f"the metrics. Generated and evaluated in {seconds:.1f} s.\n\n"
        + (f"Method parameters: {describe(params)}.\n\n" if params else "") + to_markdown(summary) + "\n",
        encoding="utf-8",
    )
    console.print(f"report: {report}   cases: {out / 'cases'}   results: {out / 'results'}", highlight=False)
    return DemoResult(out, report, len(cases), seconds)
