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


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False) -> None:
    _state["debug"] = debug


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


@app.command("methods")
@_handled
def methods_cmd(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """List the RCA methods.  Example: llmrca methods --json"""
    from llmrca.methods import entries

    rows = [{"name": e.name, "family": e.family, "needs": sorted(e.needs)} for e in entries()]
    if as_json:
        _print_json(rows)
        return
    t = Table("name", "family", "needs", "what it does")
    for e in entries():
        t.add_row(e.name, e.family, ",".join(sorted(e.needs)), e.summary)
    out.print(t)


@app.command("rank")
@_handled
def rank_cmd(
    case: Annotated[Path, typer.Argument(help="A case folder (native or RCAEval layout).")],
    method: Annotated[str, typer.Option("--method", "-m", help="Method name (see `llmrca methods`).")],
    top: Annotated[int, typer.Option("--top", "-k", help="How many candidates to show.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed for the method.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full ranking as JSON.")] = False,
) -> None:
    """Rank root-cause candidates of one case with one method.  Example: llmrca rank cases/c1 -m baro

    A method that finds nothing abnormal to blame abstains: "no answer: <reason>" and exit status 3.
    """
    from llmrca.errors import NoAnswer
    from llmrca.evaluate.single import rank_case

    try:
        ranking, seconds = rank_case(case, method, seed=seed)
    except NoAnswer as e:  # an abstention, not a crash: its own line and exit status
        err.print(f"[yellow]no answer:[/yellow] {escape(_one_line(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(3) from None
    if as_json:
        _print_json({"method": method, "runtime_s": seconds, "services": ranking.services(),
                     "candidates": [{"name": c, "score": s} for c, s in zip(ranking.candidates, ranking.scores)]})
        return
    t = Table("#", "candidate", "service", "score", title=f"{method} on {case} ({seconds:.3f} s)")
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


def _say_tasks(folder: Path) -> None:
    """One line on what a resumed run reused, recomputed as stale, and ran."""
    try:
        tasks = json.loads((folder / "run.json").read_text(encoding="utf-8")).get("tasks", {})
    except (OSError, ValueError, AttributeError):
        return
    parts = [f"resumed: {tasks.get('resumed', 0)}", f"to_run: {tasks.get('to_run', 0)}"]
    if tasks.get("replaced"):
        parts.append(f"replaced: {tasks['replaced']} (stale: case, view or parameters changed)")
    out.print(", ".join(parts), highlight=False, soft_wrap=True)


@app.command("evaluate")
@_handled
def evaluate_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Suite folders and/or case folders.")],
    methods: Annotated[str, typer.Option("--methods", "-m", help="'all', a family, or a comma list.")] = "all",
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Worker processes.")] = 1,
    timeout: Annotated[float, typer.Option(help="Per (method, case) time limit, seconds.")] = 600.0,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Result folder (resumed if it exists).")] = Path(
        "results"),
    seed: Annotated[int, typer.Option(help="Seed passed to every method.")] = 0,
    view: Annotated[str, typer.Option(help="Metric view for simulated cases: all, study or full.")] = "all",
    memory_limit: MemoryOpt = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Run methods over cases; results go to OUT/results.parquet and a killed run resumes.

    Example: llmrca evaluate suites/paper -m baro,nsigma,dummy -j 2 -o results/paper
    """
    from llmrca.evaluate import evaluate
    from llmrca.io import find_cases
    from llmrca.methods import resolve
    from llmrca.report import print_table, summarize

    options.jobs(jobs)
    options.seconds(timeout, "--timeout")
    options.memory_mb(memory_limit)
    options.executor(executor, address)
    names = resolve(methods)
    cases = [c for p in paths for c in find_cases(p)]
    if not cases:
        raise LlmrcaError("no case folders found under " + ", ".join(map(str, paths)))
    # Ids of RCAEval cases are their paths below this common folder, so two suites cannot collide.
    tops = [p.parent.parent if p in cases else p for p in paths]  # a case folder's id keeps <svc>_<fault>/<rep>
    root = os.path.commonpath([os.path.abspath(t) for t in tops])
    results = evaluate(cases, names, out_dir, jobs=jobs, timeout=timeout, seed=seed, progress=progress,
                       view=view, root=root, memory_limit_mb=memory_limit, executor=executor,
                       ray_address=address)
    _say_tasks(out_dir)
    print_table(summarize(results), out)
    out.print(f"results: {out_dir / 'results.parquet'}", highlight=False)


@app.command("report")
@_handled
def report_cmd(
    result_dir: Annotated[Path, typer.Argument(help="A folder written by `llmrca evaluate`.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, md or json.")] = "table",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file.")] = None,
) -> None:
    """Accuracy (AC@1, AC@3, Avg@5) and time per method and fault type.  Example: llmrca report results -f md"""
    from llmrca.evaluate import load_results
    from llmrca.report import print_table, summarize, to_json, to_markdown
    from llmrca.report.detection import detection_markdown, diagnosis_markdown
    from llmrca.report.multi import multi_markdown

    results = load_results(result_dir)
    summary = summarize(results)
    if fmt == "table":
        print_table(summary, out)
        for extra in (detection_markdown(results), diagnosis_markdown(results), multi_markdown(results)):
            if extra:  # the fault-free, diagnosis and multi-fault sections, when the results have such rows
                out.print(extra)
        return
    if fmt == "md":
        text = "\n".join(t for t in (to_markdown(summary), detection_markdown(results),
                                      diagnosis_markdown(results), multi_markdown(results)) if t)
    elif fmt == "json":
        text = json.dumps(to_json(summary), indent=2) + "\n"
    else:
        raise LlmrcaError(f"unknown --format {fmt!r}; use table, md or json")
    if output:
        with naming(output):
            output.write_text(text, encoding="utf-8")
        err.print(f"wrote {output}")
    else:
        sys.stdout.write(text)


@app.command("export")
@_handled
def export_cmd(
    case: Annotated[Path, typer.Argument(help="A case folder.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Destination folder.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="rcaeval or native.")] = "rcaeval",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing case folder.")] = False,
) -> None:
    """Write a case in another layout.  Example: llmrca export cases/c1 --format rcaeval --out re-out"""
    from llmrca.io import load_case, save_case

    c = load_case(case)
    if fmt == "rcaeval":
        from llmrca.io.rcaeval import write_case

        written = write_case(c, out_dir, overwrite=overwrite)
    elif fmt == "native":
        written = save_case(c, out_dir, overwrite=overwrite)
    else:
        raise LlmrcaError(f"unknown --format {fmt!r}; use rcaeval or native")
    out.print(f"wrote {written}", highlight=False)


@app.command("validate")
@_handled
def validate_cmd(path: Annotated[Path, typer.Argument(help="A case folder or a suite folder.")]) -> None:
    """Check a case or suite against the case contract and print every problem.  Example: llmrca validate suites/x"""
    from llmrca.io import validate_path

    n_cases, n_bad, lines = 0, 0, []
    for case_dir, problems in validate_path(path):
        n_cases += 1
        errors = [p for p in problems if getattr(p, "severity", "error") == "error"]
        n_bad += bool(errors)
        for p in problems:
            lines.append(f"{case_dir}: {p}")
    for line in lines:
        out.print(line, highlight=False, soft_wrap=True)
    out.print(f"{n_cases} case(s) checked, {n_bad} with errors", highlight=False)
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
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Simulate a scenario's suite of fault cases (and write the scenario used into OUT/scenario.toml).

    Example: llmrca generate --scenario paper --set deployment.replicas=6 --out suites/paper-6 -j 2
    """
    from llmrca.sim.suites import generate_suite

    options.jobs(jobs)
    paths = generate_suite(scenario, out_dir, reps=reps, seed=seed, jobs=jobs, normal=normal, sets=sets,
                           progress=progress, overwrite=overwrite)
    out.print(f"wrote {len(paths)} case(s) under {out_dir}", highlight=False)


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
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Simulate a small suite, evaluate dummy/nsigma/baro/e-diagnosis, print the table, write report.md."""
    from llmrca.demo import run_demo

    options.jobs(jobs)
    run_demo(out_dir, jobs=jobs, seed=seed, console=out, progress=progress)


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
    methods: Annotated[str, typer.Option("--methods", "-m", help="'all', a family, or a comma list."
                                         )] = "all",
    views: Annotated[str, typer.Option(help="Metric views, comma-separated: study, full, all.")] = (
        "study,full"),
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
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
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
    run_bench(name, out_dir or Path(f"bench-{Path(name).stem}"), reps=reps, jobs=jobs, timeout=timeout,
              methods=methods, views=[v.strip() for v in views.split(",") if v.strip()], full_methods=full_methods,
              seed=seed, overrides=overrides, sets=sets,
              retry_failed=retry_failed, progress=progress, console=out,
              memory_limit_mb=memory_limit, executor=executor, ray_address=address)


# -- diagnose: a ranking with the fault kind and why (issue 15) ---------------------------------------------------
@app.command("diagnose")
@_handled
def diagnose_cmd(
    case: Annotated[Path, typer.Argument(help="A case folder (native or RCAEval layout).")],
    method: Annotated[str, typer.Option("--method", "-m", help="A method that names a fault kind.")] = "servediag",
    view: Annotated[str, typer.Option(help="Metric view: all (as `rank` sees a case), study or full.")] = "all",
    top: Annotated[int, typer.Option("--top", "-k", help="How many services to show.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed for the method.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Rank the services of one case, name the fault kind and say why.  Example: llmrca diagnose cases/c1

    A method that finds nothing abnormal to blame abstains: "no answer: <reason>" and exit status 3.
    """
    import time

    from llmrca.case.views import select_view
    from llmrca.errors import NoAnswer
    from llmrca.io import load_case
    from llmrca.methods import get_method

    m = get_method(method)
    obs = select_view(load_case(case).observation, view, where=str(case))  # type: ignore[arg-type]
    t0 = time.perf_counter()
    try:
        ranking = m.rank(obs, seed=seed)
    except NoAnswer as e:
        err.print(f"[yellow]no answer:[/yellow] {escape(_one_line(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(3) from None
    seconds = time.perf_counter() - t0
    services = ranking.services()
    if as_json:
        _print_json({"method": method, "view": view, "runtime_s": seconds, "services": services,
                     "scores": [{"name": c, "score": s} for c, s in zip(ranking.candidates, ranking.scores)],
                     "diagnosis": ranking.diagnosis, "explanation": ranking.explanation})
        return
    t = Table("#", "service", "score", title=f"{method} on {case} ({view} view, {seconds:.3f} s)")
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
