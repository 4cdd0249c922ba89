"""`llmrca bench`: one command from nothing to the study's table — simulate a suite, run every method on it
under each metric view, write the results and an HTML report, print the tables.

Layout of a bench folder (every step resumes):
- ``cases/`` — the simulated suite (``suite.json`` names how it was made; an existing suite made with other
  settings is refused, not mixed);
- ``results-<view>/`` — one result store per metric view (``results.parquet``, ``results.jsonl``,
  ``run.json``); re-running computes only the missing (method, case) rows;
- ``report.html`` (self-contained: inline CSS and SVG figures), ``report-cases/`` (a page per case, linked
  from it) and ``report.md``;
- ``bench.json`` — the settings and one record per invocation (wall time, tasks computed).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from llmrca.errors import LlmrcaError

DEFAULT_TIMEOUT_S = 60.0  # per (method, case): a hanging method costs at most this per case
DEFAULT_FULL_METHODS = "light"  # the wide views leave out the COLUMN_HEAVY methods unless asked
LEFT_OUT_WHY = ("not in --full-methods, whose default leaves out the causal-discovery methods that take 6–14 s "
                "per case on the full view; --full-methods all runs them")
BENCH_JSON = "bench.json"
CASES = "cases"
CONFIDENCE = 0.95
RESAMPLES = 1000


@dataclass(frozen=True)
class BenchResult:
    out_dir: Path
    report_html: Path
    report_md: Path
    cases: int
    methods: list[str]
    views: tuple[str, ...]
    view_methods: dict[str, list[str]]  # view → the methods run under it
    results: dict[str, pd.DataFrame]  # view → rows of this bench's methods × cases
    summaries: dict[str, pd.DataFrame]  # view → summarize(..., ci=0.95)
    computed: dict[str, int]  # view → tasks run by this invocation (0 when everything was stored)
    generated: bool  # whether this invocation simulated the suite
    seconds: float  # wall time of this invocation


def run_bench(
    name: str | Path = "paper",
    out_dir: str | Path = "bench-paper",
    *,
    reps: int | None = None,
    jobs: int = 2,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    methods: str | Sequence[str] = "all",
    views: Sequence[str] = ("study", "full"),
    full_methods: str | Sequence[str] = DEFAULT_FULL_METHODS,
    seed: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    sets: Sequence[str] | Mapping[str, Any] | None = None,
    memory_limit_mb: float | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    console: Console | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
) -> BenchResult:
    """Simulate the suite of scenario ``name`` (a shipped name such as ``paper``, or a TOML file) into OUT/cases
    (unless there), evaluate ``methods`` under each of ``views``
    into OUT/results-<view>, write OUT/report.html and OUT/report.md, and print the tables on ``console``.

    ``reps``: repetitions per (fault, target), default the scenario's (paper: 10). ``seed`` seeds the suite and
    the methods (default: the scenario's). ``sets``: scenario changes (``"deployment.replicas=6"``);
    ``overrides``: suite overrides (``generate_suite``), e.g. ``{"faults": ["cpu"]}``.
    ``timeout``: seconds per (method, case). ``full_methods``: which of ``methods`` run under the wide views
    (``full``, ``all``); the default ``"light"`` leaves out the ``COLUMN_HEAVY`` causal-discovery methods,
    whose cost on the full view's ~270 columns (6–14 s per case each, see ``llmrca.methods.registry``) would
    take the benchmark far past its 15-minute budget; ``"all"`` runs them too. A folder made with another
    suite, reps, seed, overrides or scenario content is refused. ``executor``/``ray_address``: where the tasks
    run (``llmrca.evaluate.evaluate``); the rows are the same either way. ``methods`` may name plug-ins
    (``module:Class``); ``method_params``: method → parameters, as ``evaluate`` takes them (a stored row made
    with other parameters is recomputed); the report lists them.
    """
    from llmrca.case.views import VIEWS
    from llmrca.evaluate import evaluate
    from llmrca.methods import entry, resolve
    from llmrca.methods.params import checked_params
    from llmrca.scenarios import shipped
    from llmrca.sim.suites import resolve as resolve_scenario

    t0 = time.perf_counter()
    console = console or Console()
    base = resolve_scenario(name, sets=sets)
    views = tuple(dict.fromkeys(views))
    if not views:
        raise LlmrcaError("no view given; use study, full or all (comma-separated)")
    bad = [v for v in views if v not in VIEWS]
    if bad:
        raise LlmrcaError(f"unknown view(s) {', '.join(bad)}; known: {', '.join(VIEWS)}")
    names = resolve(methods if isinstance(methods, str) else list(methods))
    params = checked_params(method_params, names)
    wide_spec = full_methods if isinstance(full_methods, str) else ",".join(full_methods)
    wide = set(resolve(wide_spec))
    if wide_spec.strip() in ("light", "all"):  # these leave out built-in methods only: a plug-in named in
        wide |= {n for n in names if entry(n).origin != "built-in"}  # `methods` runs under every view
    view_methods = {v: names if v == "study" else [n for n in names if n in wide] for v in views}
    empty = [v for v in views if not view_methods[v]]
    if empty:
        raise LlmrcaError(f"no method left for the {', '.join(empty)} view(s): --full-methods {wide_spec} "
                          f"excludes every one of {', '.join(names)}; use --full-methods all or drop the view")
    over = json.loads(json.dumps(dict(overrides or {})))  # as suite.json will hold it
    if over.get("faults") is not None and list(over["faults"]) == list(base.faults):
        del over["faults"]  # naming the suite's own faults makes the same suite
    suite = resolve_scenario(base, reps=reps, seed=seed, overrides=over)
    seed = suite.seed
    out = Path(out_dir)
    settings: dict[str, Any] = {"suite": suite.name, "reps": suite.reps, "seed": suite.seed, "overrides": over}
    if sets or str(name) not in shipped() or Path(name).is_file():
        # a file or a changed scenario: its content, not its name, says which suite it is
        settings["scenario"] = suite.sha256()
    started = _now()

    cases, generated = _ensure_suite(out, settings, suite, jobs=jobs, progress=progress, console=console)
    results: dict[str, pd.DataFrame] = {}
    computed: dict[str, int] = {}
    for i, view in enumerate(views, 1):
        left_out = [n for n in names if n not in view_methods[view]]
        console.print(f"[bold]evaluate {i}/{len(views)}[/bold]: {len(view_methods[view])} method(s) × "
                      f"{len(cases)} cases, {view} view, {jobs} job(s), timeout {_secs(timeout)}"
                      + (f" (not run in this view: {', '.join(left_out)}; {LEFT_OUT_WHY})"
                         if left_out else ""), highlight=False)
        folder = out / f"results-{view}"
        results[view] = evaluate(cases, view_methods[view], folder, jobs=jobs, timeout=timeout,
                                 memory_limit_mb=memory_limit_mb, seed=seed, progress=progress,
                                 retry_failed=retry_failed, root=out / CASES, view=view, executor=executor,
                                 ray_address=ray_address,
                                 method_params={n: p for n, p in params.items() if n in view_methods[view]})
        computed[view] = _tasks_run(folder)

    seconds = time.perf_counter() - t0
    history = _record_run(out, settings, {"started": started, "seconds": round(seconds, 3),
                                          "generated": generated, "computed": computed, "jobs": jobs,
                                          "timeout": timeout, "methods": names, "views": list(views),
                                          "view_methods": view_methods, "method_params": params})
    summaries = {v: _summary(results[v], seed) for v in views}
    html_path, md_path = _write_reports(out, suite.description, settings, names, views, results, summaries,
                                        history, jobs=jobs, timeout=timeout, n_cases=len(cases),
                                        view_methods=view_methods, method_params=params)
    for v in views:
        print_overview(summaries[v], console, title=f"{suite.name}: {v} view ({len(cases)} cases)")
        print_detection(results[v], console, view=v)
    if len(views) > 1:
        print_comparison(summaries, console)
    done = ", ".join(f"{v}: {n} task(s) run" for v, n in computed.items())
    console.print(f"{'simulated the suite; ' if generated else ''}{done}; {seconds:.1f} s", highlight=False)
    console.print(f"report: {html_path}   markdown: {md_path}   results: "
                  + ", ".join(str(out / f"results-{v}" / "results.parquet") for v in views), highlight=False)
    return BenchResult(out, html_path, md_path, len(cases), names, views, view_methods, results, summaries,
                       computed, generated, seconds)


# --------------------------------------------------------------------------------------------- the suite


def _ensure_suite(out: Path, settings: dict[str, Any], scenario: Any, *, jobs: int, progress: bool,
                  console: Console) -> tuple[list[Path], bool]:
    """The suite's case folders, simulated first when missing; a suite made otherwise is refused."""
    from llmrca.sim.suites import MANIFEST, generate_suite

    cases_dir = out / CASES
    manifest = cases_dir / MANIFEST
    stored = _stored_settings(out)
    if stored is not None and stored != settings:  # its results belong to other cases, even if cases/ is gone
        raise LlmrcaError(f"{out / BENCH_JSON}: this bench folder was made with other settings: "
                          f"{_differences(stored, settings)}; use another --out, or the settings it was "
                          "made with")
    if manifest.is_file():
        try:
            made = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise LlmrcaError(f"{manifest}: unreadable ({e}); remove {cases_dir} to simulate it again"
                              ) from None
        have = {"suite": made.get("suite"), "reps": made.get("reps"), "seed": made.get("seed"),
                "overrides": made.get("overrides") or {}}
        if made.get("normal") and "normal" in settings:
            # No --normal asked means the scenario's own count, which is what a suite of that scenario holds.
            have["normal"] = made.get("normal")
        if "scenario" in settings:
            have["scenario"] = made.get("scenario_sha256")
        if have != settings:
            raise LlmrcaError(f"{manifest}: the suite there was made with other settings: "
                              f"{_differences(have, settings)}; use another --out, or the settings it was "
                              "made with")
        paths = [cases_dir / cid for cid in made.get("cases", [])]
        if paths and all(p.is_dir() for p in paths):
            console.print(f"[bold]suite[/bold]: {len(paths)} cases in {cases_dir} (already simulated)",
                          highlight=False)
            return paths, False
        # A listed folder is gone: simulate again (same seed, same bytes, so stored results stay valid).
    elif cases_dir.exists() and any(cases_dir.iterdir()) and stored is None:
        raise LlmrcaError(f"{cases_dir}: holds files but no {MANIFEST} of this bench; use another --out")
    console.print(f"[bold]simulate[/bold]: suite {settings['suite']} ({scenario.description}), "
                  f"{settings['reps']} rep(s), seed {settings['seed']}", highlight=False)
    out.mkdir(parents=True, exist_ok=True)
    _record_run(out, settings, None)  # marks the folder as this bench's before a long simulation starts
    paths = generate_suite(scenario, cases_dir, reps=settings["reps"], seed=settings["seed"],
                           jobs=jobs, overrides=settings["overrides"] or None, progress=progress,
                           overwrite=True)
    return paths, True


def _differences(have: dict[str, Any], want: dict[str, Any]) -> str:
    keys = sorted(set(have) | set(want))
    return ", ".join(f"{k} {have.get(k)!r} (asked {want.get(k)!r})" for k in keys
                     if have.get(k) != want.get(k))


def _stored_settings(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / BENCH_JSON).read_text(encoding="utf-8")).get("settings")
    except (OSError, ValueError, AttributeError):
        return None


def _record_run(out: Path, settings: dict[str, Any], run: dict[str, Any] | None) -> list[dict[str, Any]]:
    """bench.json: the settings and the invocations so far (``run`` appended); returns the invocations."""
    path = out / BENCH_JSON
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        runs = list(old.get("runs", [])) if old.get("settings") == settings else []
    except (OSError, ValueError, AttributeError):
        runs = []
    if run is not None:
        runs.append(run)
    data = {"settings": settings, "runs": runs}
    _write_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode())
    return runs


def _tasks_run(folder: Path) -> int:
    from llmrca.evaluate.store import RUN_JSON

    try:
        info = json.loads((folder / RUN_JSON).read_text(encoding="utf-8"))
        return int(info.get("tasks", {}).get("to_run", 0))
    except (OSError, ValueError, AttributeError, TypeError):
        return 0


# --------------------------------------------------------------------------------------------- reports


def _summary(results: pd.DataFrame, seed: int) -> pd.DataFrame:
    from llmrca.report import summarize

    return summarize(results, ci=CONFIDENCE, resamples=RESAMPLES, ci_seed=seed)


def _write_reports(out: Path, description: str, settings: dict[str, Any], names: list[str],
                   views: tuple[str, ...], results: dict[str, pd.DataFrame],
                   summaries: dict[str, pd.DataFrame], history: list[dict[str, Any]], *, jobs: int,
                   timeout: float | None,
                   n_cases: int, view_methods: Mapping[str, list[str]] | None = None,
                   method_params: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[Path, Path]:
    from llmrca.methods.params import describe
    from llmrca.report import compare_views, comparison_markdown, to_markdown
    from llmrca.report.detection import detection_markdown, diagnosis_markdown
    from llmrca.report.families import family_markdown
    from llmrca.report.html import write_report
    from llmrca.report.multi import multi_markdown

    last = history[-1]
    total = sum(float(r.get("seconds", 0)) for r in history)
    over = settings["overrides"]
    info = [
        ("Suite", f"{settings['suite']}: {description}"),
        ("Cases", f"{n_cases} ({settings['reps']} repetition(s) per fault × target), seed {settings['seed']}"
                  + (f", overrides {json.dumps(over)}" if over else "")),
        ("Methods", f"{len(names)}: {', '.join(names)}"),
        ("Views", ", ".join(views)),
        *((f"Not run in the {v} view", ", ".join(n for n in names if n not in ms) + f" ({LEFT_OUT_WHY})")
          for v, ms in (view_methods or {}).items() if len(ms) < len(names)),
        *((("Method parameters", describe(method_params)),) if method_params else ()),
        ("Run", f"{jobs} job(s), timeout {_secs(timeout)} per method and case"),
        ("Wall time", f"last invocation {float(last['seconds']):.1f} s (simulated the suite: "
                      f"{'yes' if last['generated'] else 'no'}; tasks run: "
                      + ", ".join(f"{v} {n}" for v, n in last["computed"].items())
                      + f"); all {len(history)} invocation(s): {total:.1f} s"),
        ("Written", _now()),
    ]
    title = f"llmrca bench {settings['suite']}"
    # report.html, its figures, and one page per case in report-cases/ (llmrca.report.drilldown)
    html_path = write_report(out / "report.html", results, title=title, info=info, summaries=summaries,
                             confidence=CONFIDENCE, resamples=RESAMPLES, seed=settings["seed"], jobs=jobs)

    md = [f"# {title}\n", *(f"- **{k}**: {v}" for k, v in info), ""]
    if len(views) > 1:
        md.append(f"## {' vs '.join(views)}: Avg@5\n")
        md.append(comparison_markdown(compare_views(summaries, "avg5"), list(views), "Avg@5"))
        md.append(f"## {' vs '.join(views)}: AC@1\n")
        md.append(comparison_markdown(compare_views(summaries, "ac1"), list(views), "AC@1"))
    md.append("## Method families\n")
    for v in views:
        md.append(f"{v} view: " + family_markdown(summaries[v]) + "\n")
    for v in views:
        md.append(f"## {v} view\n")
        md.append(to_markdown(summaries[v]))
        md.extend(t for t in (detection_markdown(results[v]), diagnosis_markdown(results[v]), multi_markdown(results[v])) if t)
    md.append("The figures, the rank each method gave the true root cause in every case, and a page per case are "
              "in report.html.\n")
    md_path = out / "report.md"
    _write_atomic(md_path, "\n".join(md).encode("utf-8"))
    return html_path, md_path


def print_overview(summary: pd.DataFrame, console: Console | None = None, *,
                   title: str = "RCA accuracy") -> None:
    """One row per method in family blocks (chance last): Avg@5 per fault type, then AC@1 and Avg@5 over all
    cases, time per case, and errors/timeouts/no-answers in one ``E/T/N`` column (no answer: the method found
    nothing abnormal to blame). Narrow enough for an 80-column terminal (report.html has AC@3)."""
    from llmrca.report.html import FAMILY_LABELS
    from llmrca.report.tables import ALL, CHANCE, FAILURE_NOTE, _fault_order, _fmt, _fmt_time, failure_cells

    console = console or Console()
    if summary.empty:
        console.print(f"{title}: no results", highlight=False)
        return
    faults = _fault_order(summary["fault_type"].unique())
    cell = {(str(r["method"]), str(r["fault_type"])): r for _, r in summary.iterrows()}
    table = _table(f"{title} — Avg@5 per fault type; all cases")
    table.add_column("Method", style="bold", no_wrap=True, min_width=_name_width(summary["method"]))
    for f in faults:
        table.add_column(_short(f), justify="right")
    for label in ("AC@1", "Avg@5", "s/case", "E/T/N"):
        table.add_column(label, justify="right")
    family = None
    for m in dict.fromkeys(map(str, summary["method"])):
        r = cell.get((m, ALL))
        fam = str(r["family"]) if r is not None else ""
        if fam != family and m != CHANCE:
            table.add_row(f"[italic dim]{FAMILY_LABELS.get(fam, fam)}[/italic dim]")
            family = fam
        per = [_fmt(cell[(m, f)]["avg5"]) if (m, f) in cell else "" for f in faults]
        table.add_row(m, *per, *(_fmt(r[k]) if r is not None else "" for k in ("ac1", "avg5")),
                      _fmt_time(r["time_s"]) if r is not None else "",
                      "/".join(failure_cells(r, chance_blank=True)).strip("/"),
                      style="dim" if m == CHANCE else None)
    console.print(table)
    console.print("E/T/N: errors/timeouts/no answer. " + FAILURE_NOTE, style="dim", highlight=False)


def print_detection(results: pd.DataFrame, console: Console | None = None, *, view: str | None = None) -> None:
    """One line per suite: each method's AUROC of its top score, fault vs fault-free runs (n/a without any);
    ``view`` names the metric view in the line."""
    from llmrca.report.detection import detection_summary

    console = console or Console()
    det = detection_summary(results)
    if det.empty:
        return
    cells = [f"{r['method']} {'n/a' if pd.isna(r['auroc']) else format(float(r['auroc']), '.2f')}"
             for _, r in det.iterrows()]
    where = f" ({view} view)" if view else ""
    console.print(f"Fault vs fault-free AUROC of the top score{where}: " + ", ".join(cells), highlight=False)


def print_comparison(summaries: Mapping[str, pd.DataFrame], console: Console | None = None,
                     metric: str = "avg5") -> None:
    """Per method: ``metric`` over all cases under each view, and per fault type the difference (last view −
    first)."""
    from llmrca.report import compare_views
    from llmrca.report.tables import ALL, METRICS, _fault_order, _fmt

    console = console or Console()
    views = list(summaries)
    comp = compare_views(summaries, metric)
    if comp.empty:
        return
    faults = _fault_order(comp["fault_type"].unique())
    cell = {(str(r["method"]), str(r["fault_type"])): r for _, r in comp.iterrows()}
    label = METRICS.get(metric, metric)
    table = _table(f"{label}: {views[0]} → {views[-1]} view (Δ = {views[-1]} − {views[0]})")
    table.add_column("Method", style="bold", no_wrap=True, min_width=_name_width(comp["method"]))
    for v in views:
        table.add_column(f"all\n{v}", justify="right")
    table.add_column("all\nΔ", justify="right")
    for f in faults:
        table.add_column(f"{_short(f)}\nΔ", justify="right")
    for m in dict.fromkeys(map(str, comp["method"])):
        total = cell.get((m, ALL))
        row = [m, *(_fmt(total[v]) if total is not None else "" for v in views)]
        for f in (ALL, *faults):
            r = cell.get((m, f))
            row.append(_delta(float(r["diff"])) if r is not None else "")
        table.add_row(*row)
    console.print(table)


def _table(title: str) -> Table:
    from rich import box

    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))


def _name_width(names: pd.Series) -> int:
    return min(24, max((len(str(n)) for n in names), default=6))


def _short(fault: str) -> str:
    return {"memory": "mem", "network": "net"}.get(fault, fault[:5])


def _delta(d: float) -> str:
    if math.isnan(d):  # the cell is missing in one view
        return "–"
    colour = "green" if d > 0.005 else ("red" if d < -0.005 else "dim")
    return f"[{colour}]{d:+.2f}[/{colour}]"


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` in one step (a reader sees the old or the new file), with the usual permissions."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _secs(timeout: float | None) -> str:
    return "none" if timeout is None else f"{timeout:g} s"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
