"""The `llmrca` command: a thin layer, each command one library call. Errors are one line; --debug shows the trace."""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llmrca import options
from llmrca.demo import DEMO_METHODS
from llmrca.errors import LlmrcaError, naming
from llmrca.testbed.cli import testbed_app

app = typer.Typer(
    name="llmrca",
    help="Test root cause analysis methods on LLM inference deployments.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)
_state = {"debug": False}

# Errors a user can cause and fix; anything else is a bug and keeps its traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (LlmrcaError, FileNotFoundError, FileExistsError,
                                                 NotADirectoryError, PermissionError)
# OSErrors that come from the machine, not from llmrca: a full or read-only disk, a quota, too many open files.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO, errno.EMFILE, errno.ENFILE,
                       errno.ENAMETOOLONG, errno.EISDIR}


def _is_user_error(e: BaseException) -> bool:
    return isinstance(e, _USER_ERRORS) or (isinstance(e, OSError) and e.errno in _ENVIRONMENT_ERRNOS)


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        what = f"{e.filename}: " if e.filename else ""
        name = errno.errorcode.get(e.errno or 0, "")
        return f"{what}{e.strerror}" + (f" ({name})" if name else "")
    return str(e)


def _handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if _state["debug"] or not _is_user_error(e):
                raise
            # escaped: messages name TOML tables such as [deployment], which are not markup
            err.print(f"[red]error:[/red] {escape(_one_line(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"llmrca {_version()}\n")
        raise typer.Exit()


def _version() -> str:
    """The installed distribution's version; the package's own where llmrca runs from a source tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llmrca")
    except PackageNotFoundError:
        from llmrca import __version__

        return __version__


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
          _v: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                           help="Print llmrca's version and exit.")] = False) -> None:
    _state["debug"] = debug


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


# --- One CLI (issue 16): every command takes --json; every command that reads metrics takes --view ----------
# With --json, stdout holds one JSON document and nothing else: tables, notes and progress go to stderr.
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout (tables and "
                                                      "progress go to stderr).")]
ViewOpt = Annotated[str, typer.Option(
    "--view", help="Metric view the methods see: study (the reference study's feature set), full (every series "
                   "under its source's name) or all (both). Cases of foreign data (RCAEval) have no views and are "
                   "given whole.")]


def _console(as_json: bool) -> Console:
    """Where a command's human-readable lines go: stdout, or stderr when stdout carries --json."""
    return err if as_json else out


def _view_title(asked: str, used: str | None = None) -> str:
    """How a table title names its view: ``study view``; ``all columns (…)`` when the case had no views."""
    if used is None or used == asked:
        return f"{asked} view"
    return f"all columns ({asked} view asked; the case is not llmrca telemetry, so it has no views)"


# --- method parameters and plug-in methods (llmrca.methods.params, llmrca.methods.plugins), shared by the commands
METHODS_HELP = ("'all' (the built-in methods), a family (metric, trace, multi-source), or a comma list of names "
                "and plug-ins' module:Class (e.g. baro,mymod:MeanShift).")
ParamOpt = Annotated[list[str] | None, typer.Option(
    "--param", help="A method parameter, METHOD.KEY=VALUE with a TOML value, e.g. baro.window=30 (repeatable; "
                    "wins over --params).")]
ParamsFileOpt = Annotated[list[Path] | None, typer.Option(
    "--params", help="A TOML file of method parameters: a [METHOD] table of KEY = VALUE lines (repeatable).")]


def _method_params(items: list[str] | None, files: list[Path] | None) -> dict[str, dict[str, Any]]:
    from llmrca.methods.params import from_options

    return from_options(items, files)
# --- end of method parameters and plug-in methods


# --- the user's SLI column and call graph (issue 17: RCAEval folders say neither; llmrca.io.system) -------------
SliOpt = Annotated[str | None, typer.Option(
    "--sli", help="The SLI column (e.g. frontend_latency-50): the series the random-walk heads, microcause, "
                  "microscope and monitorrank start from; its service is the entry. Default: the topology's, else "
                  "inferred (docs/methods.md, 'What each method needs').")]
CallGraphOpt = Annotated[Path | None, typer.Option(
    "--call-graph", help="A call graph file: CSV lines 'caller,callee', or JSON (a .json name): a list of "
                         "caller/callee pairs; replaces the case's topology edges. Default: the topology's, else the "
                         "traces' calls, else (microrca, microscope, monitorrank) the entry calling every service.")]


def _system(sli: str | None, call_graph: Path | None) -> Any:
    from llmrca.io.system import system_info

    return system_info(sli=sli, call_graph=call_graph)
# --- end of the user's SLI column and call graph


@app.command("methods")
@_handled
def methods_cmd(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """List the RCA methods.  Example: llmrca methods --json"""
    from llmrca.methods import entries, installed

    plugged, broken = installed()  # installed packages' methods (entry points); one line per broken one
    for line in broken:
        err.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False, soft_wrap=True)
    every = [*entries(), *plugged]
    # a plug-in's row says where it comes from; built-in rows keep their three keys
    rows = [{"name": e.name, "family": e.family, "needs": sorted(e.needs),
             **({"origin": e.origin} if e.origin != "built-in" else {})} for e in every]
    if as_json:
        _print_json(rows)
        return
    t = Table("name", "family", "needs", "what it does", *(["origin"] if plugged else []))
    for e in every:
        t.add_row(e.name, e.family, ",".join(sorted(e.needs)), e.summary, *([e.origin] if plugged else []))
    out.print(t)


def _rank_one(case: Path, method: str, seed: int, view: str, param: list[str] | None,
              params_files: list[Path] | None, system: Any = None) -> Any:
    """One method on one case in ``view`` (rank, diagnose); an abstention exits with status 3 and its line."""
    from llmrca.errors import NoAnswer
    from llmrca.evaluate.single import rank_in_view
    from llmrca.methods import entry
    from llmrca.methods.params import checked_params

    options.view(view)
    name = entry(method).name
    ps = checked_params(_method_params(param, params_files), [name]).get(name, {})
    try:
        return rank_in_view(case, method, seed=seed, view=view, system=system, **ps)
    except NoAnswer as e:  # an abstention, not a crash: its own line and exit status
        err.print(f"[yellow]no answer:[/yellow] {escape(_one_line(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(3) from None


@app.command("rank")
@_handled
def rank_cmd(
    case: Annotated[Path, typer.Argument(help="A case folder (native or RCAEval layout).")],
    method: Annotated[str, typer.Option("--method", "-m", help="Method name (see `llmrca methods`) or a plug-in's "
                                                               "module:Class.")],
    top: Annotated[int, typer.Option("--top", "-k", help="How many candidates to show.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed for the method.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full ranking as JSON.")] = False,
    view: ViewOpt = options.DEFAULT_VIEW,
    param: ParamOpt = None,
    params_files: ParamsFileOpt = None,
    sli: SliOpt = None,
    call_graph: CallGraphOpt = None,
) -> None:
    """Rank root-cause candidates of one case with one method.  Example: llmrca rank cases/c1 -m baro

    A method that finds nothing abnormal to blame abstains: "no answer: <reason>" and exit status 3.
    """
    r = _rank_one(case, method, seed, view, param, params_files, _system(sli, call_graph))
    ranking, seconds = r.ranking, r.seconds
    if as_json:
        _print_json({"method": method, "view": r.view, "runtime_s": seconds, "services": ranking.services(),
                     "candidates": [{"name": c, "score": s} for c, s in zip(ranking.candidates, ranking.scores)]})
        return
    t = Table("#", "candidate", "service", "score",
              title=f"{method} on {case}, {_view_title(view, r.view)} ({seconds:.3f} s)")
    for i, (c, s) in enumerate(zip(ranking.candidates[:top], ranking.scores[:top]), 1):
        t.add_row(str(i), c, c.split("_", 1)[0], f"{s:.4g}")
    out.print(t)
    out.print("services: " + ", ".join(ranking.services()[:top]), highlight=False)


MemoryOpt = Annotated[float | None, typer.Option(
    "--memory-limit", help="MB of memory each task may add while ranking (0 = no cap); default: three quarters "
                           "of the available memory shared among the workers.")]
ExecutorOpt = Annotated[str, typer.Option(help="Where tasks run: local (worker processes) or ray (Ray actors; "
                                               "needs the ray extra).")]
AddressOpt = Annotated[str | None, typer.Option(help="Ray cluster to join (e.g. auto, ray://head:10001); "
                                                     "default: a local Ray for the run.")]


def _say_tasks(folder: Path, console: Console | None = None) -> dict[str, Any]:
    """One line on what a resumed run reused, recomputed as stale, and ran; returns run.json's task counts."""
    try:
        tasks = json.loads((folder / "run.json").read_text(encoding="utf-8")).get("tasks", {})
    except (OSError, ValueError, AttributeError):
        return {}
    parts = [f"resumed: {tasks.get('resumed', 0)}", f"to_run: {tasks.get('to_run', 0)}"]
    if tasks.get("replaced"):
        parts.append(f"replaced: {tasks['replaced']} (stale: case, view or parameters changed)")
    (console or out).print(", ".join(parts), highlight=False, soft_wrap=True)
    return tasks


def _print_summary(results: Any, console: Console, title: str) -> str | None:
    """The accuracy table, or one line saying why there is none; returns that reason (None: a table)."""
    from llmrca.report import print_table, summarize
    from llmrca.report.empty import why_empty

    why = why_empty(results)
    if why is not None:
        console.print(f"{title}: no accuracy table: {escape(why)}", highlight=False, soft_wrap=True)
        return why
    print_table(summarize(results), console, title=title)
    return None


@app.command("evaluate")
@_handled
def evaluate_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Suite folders and/or case folders.")],
    methods: Annotated[str, typer.Option("--methods", "-m", help=METHODS_HELP)] = "all",
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Worker processes.")] = 1,
    timeout: Annotated[float, typer.Option(help="Per (method, case) time limit, seconds.")] = 600.0,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Result folder (resumed if it exists).")] = Path(
        "results"),
    seed: Annotated[int, typer.Option(help="Seed passed to every method.")] = 0,
    view: ViewOpt = options.DEFAULT_VIEW,
    memory_limit: MemoryOpt = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    progress: Annotated[bool, typer.Option(help="Show progress (a bar on a terminal, else a line every 10 s).")
                        ] = True,
    as_json: JsonOpt = False,
    param: ParamOpt = None,
    params_files: ParamsFileOpt = None,
    retry_failed: Annotated[bool, typer.Option(help="Run again the stored tasks whose status is not ok (errors, "
                                                    "timeouts, no-answers); the other rows are kept.")] = False,
    sli: SliOpt = None,
    call_graph: CallGraphOpt = None,
) -> None:
    """Run methods over cases; each result is journaled to OUT/results.jsonl as it arrives (OUT/results.parquet
    is rewritten from it every 30 s and at the end), and a killed run resumes.

    Example: llmrca evaluate suites/paper -m baro,nsigma,dummy -j 2 -o results/paper
    """
    from llmrca.evaluate import evaluate
    from llmrca.io import find_cases
    from llmrca.methods import resolve
    from llmrca.report import summarize, to_json

    options.view(view)
    options.jobs(jobs)
    options.seconds(timeout, "--timeout")
    options.memory_mb(memory_limit)
    options.executor(executor, address)
    names = resolve(methods)
    system = _system(sli, call_graph)
    cases = [c for p in paths for c in find_cases(p)]
    if not cases:
        raise LlmrcaError("no case folders found under " + ", ".join(map(str, paths)))
    # Ids of RCAEval cases are their paths below this common folder, so two suites cannot collide.
    tops = [p.parent.parent if p in cases else p for p in paths]  # a case folder's id keeps <svc>_<fault>/<rep>
    root = os.path.commonpath([os.path.abspath(t) for t in tops])
    if system is not None:  # a column or service the cases lack: one line now, not an error row per case
        from llmrca.io import load_case
        from llmrca.io.system import apply_system

        apply_system(load_case(cases[0], root=root), system, where=str(cases[0]))
    results = evaluate(cases, names, out_dir, jobs=jobs, timeout=timeout, seed=seed, progress=progress,
                       view=view, root=root, memory_limit_mb=memory_limit, executor=executor,
                       ray_address=address, method_params=_method_params(param, params_files),
                       retry_failed=retry_failed, system=system)
    con = _console(as_json)
    tasks = _say_tasks(out_dir, con)
    why = _print_summary(results, con, f"RCA accuracy, {view} view ({len(cases)} case(s))")
    con.print(f"results: {out_dir / 'results.jsonl'} (and results.parquet)", highlight=False)
    if as_json:
        _print_json({"view": view, "cases": len(cases), "methods": names, "out": str(out_dir), "tasks": tasks,
                     "rows": len(results), "summary": to_json(summarize(results)), "empty_because": why})


@app.command("report")
@_handled
def report_cmd(
    result_dir: Annotated[Path, typer.Argument(help="A folder written by `llmrca evaluate`, or a bench folder "
                                                    "(its results-VIEW folder is read).")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, md, json or html.")] = "table",
    output: Annotated[Path | None, typer.Option("--output", "--out", "-o", help=(
        "Write to this file (html: default RESULT_DIR/report.html, with a page per case in report-cases/ "
        "beside it)."))] = None,
    view: Annotated[str | None, typer.Option(
        "--view", help="The view the results were computed under (a results folder holds one; a bench folder one "
                       f"per view); default: the folder's own, for a bench folder {options.DEFAULT_VIEW}.")] = None,
    ci: Annotated[float | None, typer.Option(
        "--ci", help="Confidence level of the bootstrap intervals of AC@1, AC@3 and Avg@5 (cases resampled within "
                     "each fault type and target); 0: none. Default 0.95 for table, md and html; json carries "
                     "intervals only when --ci is given.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy (AC@1, AC@3, Avg@5) and time per method and fault type.  Example: llmrca report results -f md"""
    # --format html and --ci: the report with figures and per-case pages (llmrca.report.html.write_report)
    from llmrca.evaluate import load_results
    from llmrca.report import print_table, summarize, to_json, to_markdown
    from llmrca.report.detection import detection_markdown, diagnosis_markdown
    from llmrca.report.empty import why_empty
    from llmrca.report.multi import multi_markdown
    from llmrca.report.results_view import results_folder, view_title

    if ci is not None and not 0 <= ci < 1:
        raise LlmrcaError(f"--ci: a confidence level in [0, 1) (e.g. 0.95; 0: no intervals), is {ci:g}")
    folder, used = results_folder(result_dir, view)
    results = load_results(folder)
    if as_json:
        fmt = "json"
    asked_ci = ci  # json keeps its records' keys unless intervals are asked for
    ci = (0.95 if fmt != "json" else 0.0) if ci is None else ci
    if fmt == "html":
        from llmrca.report.html import write_report

        path = output or folder / "report.html"
        with naming(path):
            write_report(path, {used: results}, title=f"llmrca report {result_dir.name}",
                         info=[("Results", str(folder))], confidence=ci or 0.95)
        err.print(f"wrote {path}")
        return
    summary = summarize(results, ci=ci or None)
    why = why_empty(results)
    title = f"RCA accuracy, {view_title(used)}"
    if fmt == "table":
        from llmrca.report.tables import print_intervals

        if why is not None:
            out.print(f"{title}: no accuracy table: {escape(why)}", highlight=False, soft_wrap=True)
        else:
            print_table(summary, out, title=title)
            if ci:
                print_intervals(summary, out)
        for extra in (detection_markdown(results), diagnosis_markdown(results), multi_markdown(results)):
            if extra:  # the fault-free, diagnosis and multi-fault sections, when the results have such rows
                out.print(extra)
        return
    if fmt == "md":
        head = f"## {title}\n\n" + (f"_No accuracy table: {why}._\n" if why is not None else "")
        text = "\n".join(t for t in (head, to_markdown(summary) if why is None else "",
                                      detection_markdown(results), diagnosis_markdown(results),
                                      multi_markdown(results)) if t)
    elif fmt == "json":
        rows = to_json(summary)
        if ci:  # the interval columns beside each record's keys
            for row, (_, r) in zip(rows, summary.iterrows(), strict=True):
                row.update({c: (None if r[c] != r[c] else float(r[c]))
                            for c in ("ac1_lo", "ac1_hi", "ac3_lo", "ac3_hi", "avg5_lo", "avg5_hi")})
        doc: Any = ({"view": used, "results": str(folder), "ci": asked_ci, "summary": rows, "empty_because": why}
                    if as_json else rows)
        text = json.dumps(doc, indent=2) + "\n"
    else:
        raise LlmrcaError(f"unknown --format {fmt!r}; use table, md, json or html")
    if output:
        with naming(output):
            output.write_text(text, encoding="utf-8")
        err.print(f"wrote {output}")
    else:
        sys.stdout.write(text)


@app.command("export")
@_handled
def export_cmd(
    case: Annotated[Path, typer.Argument(help="A case folder, or a suite folder (every case below it).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Destination folder.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="rcaeval or native.")] = "rcaeval",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing case folder.")] = False,
    view: ViewOpt = options.DEFAULT_VIEW,
    as_json: JsonOpt = False,
) -> None:
    """Write a case, or every case of a suite, in another layout, with the metric columns of one view.

    Example: llmrca export suites/paper --format rcaeval --out re-out --view full
    """
    from llmrca.io.export import Skipped, export_cases

    options.view(view)
    skipped: list[Skipped] = []
    written = export_cases(case, out_dir, fmt=fmt, view=view, overwrite=overwrite, skipped=skipped)
    con = _console(as_json)
    for w in written:
        con.print(f"wrote {w.path} ({_view_title(view, w.view)}: {w.columns} metric columns)", highlight=False)
    for sk in skipped:
        con.print(f"left out {sk.source}: {sk.why}", highlight=False)
    if len(written) > 1 or skipped:
        con.print(f"{len(written)} case(s) exported under {out_dir}"
                  + (f", {len(skipped)} left out" if skipped else ""), highlight=False)
    if as_json:
        _print_json({"format": fmt, "view": view, "out": str(out_dir),
                     "cases": [{"case": str(w.source), "path": str(w.path), "view": w.view, "columns": w.columns}
                               for w in written],
                     "left_out": [{"case": str(sk.source), "why": sk.why} for sk in skipped]})


@app.command("validate")
@_handled
def validate_cmd(path: Annotated[Path, typer.Argument(help="A case folder or a suite folder.")],
                 as_json: JsonOpt = False) -> None:
    """Check a case or suite against the case contract and print every problem.  Example: llmrca validate suites/x"""
    from llmrca.io import validate_path

    n_cases, n_bad, lines, found = 0, 0, [], []
    for case_dir, problems in validate_path(path):
        n_cases += 1
        errors = [p for p in problems if getattr(p, "severity", "error") == "error"]
        n_bad += bool(errors)
        for p in problems:
            lines.append(f"{case_dir}: {p}")
            found.append({"case": str(case_dir), "severity": getattr(p, "severity", "error"), "problem": str(p)})
    con = _console(as_json)
    for line in lines:
        con.print(line, highlight=False, soft_wrap=True)
    con.print(f"{n_cases} case(s) checked, {n_bad} with errors", highlight=False)
    if as_json:
        _print_json({"cases": n_cases, "with_errors": n_bad, "problems": found})
    if n_bad:
        raise typer.Exit(1)


@app.command("faults")
@_handled
def faults_cmd(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """List the fault catalogue (one spec per fault type, shared by the simulator and injectors)."""
    from llmrca.faults import get, rows

    items = [{"id": i, "kind": get(i).fault_kind, "layer": layer, "causes": ", ".join(get(i).causes), "parameters": p, "description": d}
             for i, layer, p, d in rows()]
    if as_json:
        _print_json(items)
        return
    t = Table("id", "kind", "layer", "cause", "parameters (defaults)", "what it does")
    for r in items:
        t.add_row(r["id"], r["kind"], r["layer"], r["causes"], r["parameters"], r["description"])
    out.print(t)


ScenarioArg = Annotated[str, typer.Option("--scenario", "--suite", "-s", help="Scenario: a shipped name "
                                                                            "(paper, demo; see `llmrca scenarios`) "
                                                                            "or a TOML file. --suite is a synonym.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE change to the scenario, a dotted key "
                                                                "into its tables and a TOML value, e.g. "
                                                                "deployment.replicas=6 (repeatable).")]


@app.command("generate")
@_handled
def generate_cmd(
    scenario: ScenarioArg = "paper",
    sets: SetOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the case folders.")] = Path("cases"),
    reps: Annotated[int | None, typer.Option(help="Repetitions per (fault, target); default: the scenario's."
                                             )] = None,
    seed: Annotated[int | None, typer.Option(help="Suite seed (every case's seed derives from it); default: the "
                                                  "scenario's.")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Worker processes.")] = 1,
    normal: Annotated[int | None, typer.Option(help="Fault-free runs to write too; default: the scenario's."
                                               )] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing case folders.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress on stderr (a line per case on a terminal, else "
                                                "one every 10 s).")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Simulate a scenario's suite of fault cases (and write the scenario used into OUT/scenario.toml).

    Example: llmrca generate --scenario paper --set deployment.replicas=6 --out suites/paper-6 -j 2
    """
    from llmrca.sim.suites import generate_suite

    options.jobs(jobs)
    paths = generate_suite(scenario, out_dir, reps=reps, seed=seed, jobs=jobs, normal=normal, sets=sets,
                           progress=progress, overwrite=overwrite)
    _console(as_json).print(f"wrote {len(paths)} case(s) under {out_dir}", highlight=False)
    if as_json:
        _print_json({"out": str(out_dir), "cases": [str(p) for p in paths]})


scenarios_app = typer.Typer(help="The shipped scenarios, and what a scenario resolves to.",
                            invoke_without_command=True, no_args_is_help=False)


@scenarios_app.callback()
def scenarios_cmd(ctx: typer.Context,
                  as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """List the shipped scenarios.  Example: llmrca scenarios; llmrca scenarios show paper"""
    if ctx.invoked_subcommand is not None:
        return
    _handled(_list_scenarios)(as_json)


def _list_scenarios(as_json: bool) -> None:
    from llmrca.scenarios import load, shipped

    rows = []
    for name in shipped():
        s = load(name)
        rows.append({"name": s.name, "faults": list(s.faults), "reps": s.reps, "replicas": s.deploy.replicas,
                     "gpu": s.deploy.gpu_kind.name, "cases": _count_cases(s), "description": s.description})
    if as_json:
        _print_json(rows)
        return
    t = Table("name", "cases", "faults", "reps", "deployment", "what it is")
    for r in rows:
        t.add_row(r["name"], str(r["cases"]), ",".join(r["faults"]), str(r["reps"]),
                  f"{r['replicas']} x {r['gpu']}", r["description"])
    out.print(t)


def _count_cases(s: Any) -> int:
    from llmrca.sim.suites import plan_of

    return len(plan_of(s))


@scenarios_app.command("show")
@_handled
def scenarios_show_cmd(
    scenario: Annotated[str, typer.Argument(help="A shipped name or a TOML file.")],
    sets: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="The resolved tables as JSON instead of TOML.")] = False,
) -> None:
    """Print a scenario with every value resolved (defaults filled in, --set applied), as TOML.

    Example: llmrca scenarios show paper --set faults.strength=0.5
    """
    from llmrca.scenarios import load

    s = load(scenario, sets)
    if as_json:
        _print_json({**s.to_document(), "sha256": s.sha256()})
        return
    sys.stdout.write(s.to_toml())


app.add_typer(scenarios_app, name="scenarios")


@app.command("demo")
@_handled
def demo_cmd(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The demo's folder (replaced if it is one).")] = Path(
        "llmrca-demo"),
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Worker processes.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the suite and the methods.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show progress on stderr (bars on a terminal, else a line "
                                                "every 10 s).")] = True,
    methods: Annotated[str, typer.Option("--methods", "-m", help=METHODS_HELP)] = ",".join(DEMO_METHODS),
    param: ParamOpt = None,
    params_files: ParamsFileOpt = None,
    view: ViewOpt = options.DEFAULT_VIEW,
    as_json: JsonOpt = False,
) -> None:
    """Simulate a small suite, evaluate dummy/nsigma/baro/e-diagnosis (or --methods), print the table, write
    report.md."""
    from llmrca.demo import run_demo
    from llmrca.methods import resolve
    from llmrca.report import summarize, to_json

    options.view(view)
    options.jobs(jobs)
    r = run_demo(out_dir, jobs=jobs, seed=seed, console=_console(as_json), progress=progress, view=view,
                 methods=resolve(methods), method_params=_method_params(param, params_files))
    if as_json:
        from llmrca.evaluate import load_results

        _print_json({"view": view, "out": str(r.out_dir), "report": str(r.report), "cases": r.cases,
                     "seconds": round(r.seconds, 3), "summary": to_json(summarize(load_results(r.out_dir /
                                                                                               "results")))})


@app.command("bench")
@_handled
def bench_cmd(
    suite: Annotated[str | None, typer.Argument(help="Scenario to benchmark: paper (the study's), demo, or a "
                                                     "TOML file; the same as --scenario.")] = None,
    scenario: Annotated[str | None, typer.Option("--scenario", help="Scenario: a shipped name or a TOML file "
                                                                    "(default paper).")] = None,
    sets: SetOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Bench folder (resumed if it exists); "
                                                 "default bench-NAME.")] = None,
    reps: Annotated[int | None, typer.Option(help="Repetitions per (fault, target); default: the scenario's."
                                             )] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Worker processes.")] = 2,
    timeout: Annotated[float, typer.Option(help="Per (method, case) time limit, seconds.")] = 60.0,
    methods: Annotated[str, typer.Option("--methods", "-m", help=METHODS_HELP)] = "all",
    views: Annotated[str, typer.Option(
        "--view", "--views", help="Metric views, comma-separated: study, full, all (each one a results-VIEW "
                                  "folder; study,full adds the comparison of the two).")] = options.DEFAULT_VIEW,
    full_methods: Annotated[str, typer.Option(
        help="Methods run under the full/all views: 'light' (all but the causal-discovery methods whose cost "
             "explodes with the column count: pc-*, fci-*, causalai, microcause, causalrca), 'all', or a list."
    )] = "light",
    faults: Annotated[str | None, typer.Option(help="Only these fault types (comma list).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the suite and the methods; default: the scenario's."
                                             )] = None,
    retry_failed: Annotated[bool, typer.Option(help="Run failed and timed-out tasks again.")] = False,
    memory_limit: MemoryOpt = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    progress: Annotated[bool, typer.Option(help="Show progress on stderr (bars on a terminal, else a line "
                                                "every 10 s).")] = True,
    param: ParamOpt = None,
    params_files: ParamsFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Simulate a scenario's suite, run the methods under each view, write report.html and the results, print
    the tables.

    Resumable: running it again computes only what is missing.  Example: llmrca bench paper --jobs 2
    """
    from llmrca.bench import run_bench

    options.jobs(jobs)
    options.seconds(timeout, "--timeout")
    options.memory_mb(memory_limit)
    options.executor(executor, address)
    if suite is not None and scenario is not None and suite != scenario:
        raise LlmrcaError(f"two scenarios given: {suite!r} and --scenario {scenario!r}; give one")
    name = scenario or suite or "paper"
    overrides = {"faults": [f.strip() for f in faults.split(",") if f.strip()]} if faults else None
    b = run_bench(name, out_dir or Path(f"bench-{Path(name).stem}"), reps=reps, jobs=jobs, timeout=timeout,
                  methods=methods, views=options.views(views), full_methods=full_methods,
                  seed=seed, overrides=overrides, sets=sets,
                  retry_failed=retry_failed, progress=progress, console=_console(as_json),
                  memory_limit_mb=memory_limit, executor=executor, ray_address=address,
                  method_params=_method_params(param, params_files))
    if as_json:
        from llmrca.report import to_json

        _print_json({"out": str(b.out_dir), "report_html": str(b.report_html), "report_md": str(b.report_md),
                     "cases": b.cases, "views": list(b.views), "view_methods": b.view_methods,
                     "computed": b.computed, "generated": b.generated, "seconds": round(b.seconds, 3),
                     "summary": {v: to_json(b.summaries[v]) for v in b.views}})


# -- diagnose: a ranking with the fault kind and why (issue 15) ---------------------------------------------------
@app.command("diagnose")
@_handled
def diagnose_cmd(
    case: Annotated[Path, typer.Argument(help="A case folder (native or RCAEval layout).")],
    method: Annotated[str, typer.Option("--method", "-m", help="A method that names a fault kind (or a plug-in's "
                                                               "module:Class).")] = "servediag",
    view: ViewOpt = options.DEFAULT_VIEW,
    top: Annotated[int, typer.Option("--top", "-k", help="How many services to show.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed for the method.")] = 0,
    as_json: JsonOpt = False,
    param: ParamOpt = None,
    params_files: ParamsFileOpt = None,
    sli: SliOpt = None,
    call_graph: CallGraphOpt = None,
) -> None:
    """Rank the services of one case, name the fault kind and say why.  Example: llmrca diagnose cases/c1
    --view full (servediag reads more in the full view: GPU temperature and clocks, the engine's own series).

    A method that finds nothing abnormal to blame abstains: "no answer: <reason>" and exit status 3.
    """
    r = _rank_one(case, method, seed, view, param, params_files, _system(sli, call_graph))
    ranking, seconds = r.ranking, r.seconds
    services = ranking.services()
    if as_json:
        _print_json({"method": method, "view": r.view, "runtime_s": seconds, "services": services,
                     "scores": [{"name": c, "score": s} for c, s in zip(ranking.candidates, ranking.scores)],
                     "diagnosis": ranking.diagnosis, "explanation": ranking.explanation})
        return
    t = Table("#", "service", "score", title=f"{method} on {case}, {_view_title(view, r.view)} ({seconds:.3f} s)")
    score = dict(zip(ranking.candidates, ranking.scores))
    for i, s in enumerate(services[:top], 1):
        t.add_row(str(i), s, f"{score.get(s, float('nan')):.4g}")
    out.print(t)
    out.print(f"diagnosis: {ranking.diagnosis or '(none: this method names no fault kind)'}", highlight=False)
    if ranking.explanation:
        out.print(f"explanation: {escape(ranking.explanation)}", highlight=False, soft_wrap=True)


app.add_typer(testbed_app, name="testbed")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
