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


@testbed_app.command("up")
@_handled
def up_cmd(
    replicas: Annotated[int, typer.Option(help="Engine replicas (the study: 4).")] = 4,
    rate: Annotated[float, typer.Option(help="Load, requests/s (the study: 5).")] = 5.0,
    prompt_tokens: Annotated[int, typer.Option(help="Prompt length (the study: 512).")] = 512,
    output_tokens: Annotated[int, typer.Option(help="max_tokens (the study: 256).")] = 256,
    gpu: Annotated[str, typer.Option(help="Emulated GPU kind: a100-80gb, h100, l4.")] = "a100-80gb",
    load: Annotated[bool, typer.Option(help="Run the load generator.")] = True,
    scrape_interval: Annotated[float, typer.Option(help="Prometheus scrape interval, s.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the workload and the emulated hardware.")] = 0,
    config: Annotated[Path | None, typer.Option(help="A JSON file of TestbedConfig fields (overrides "
                                                     "the options).")] = None,
    real_gpu: Annotated[list[str] | None, typer.Option(help="REPLICA=INDEX: the gpu fault on this replica caps "
                                                            "real GPU INDEX with nvidia-smi (repeatable).")] = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Start the deployment (detached; stop it with `down`).  Example: llmrca testbed up --replicas 4"""
    from llmrca.testbed import control
    from llmrca.testbed.config import TestbedConfig

    fields: dict[str, Any] = {"replicas": replicas, "rate": rate, "prompt_tokens": prompt_tokens,
                              "output_tokens": output_tokens, "gpu": gpu, "load": load,
                              "scrape_interval": scrape_interval, "rate_window": max(5.0, 5 * scrape_interval),
                              "seed": seed}
    if config is not None:
        fields.update(json.loads(config.read_text(encoding="utf-8")))
    cfg = TestbedConfig.from_dict(fields)
    gpus = {}
    for item in real_gpu or []:
        name, sep, index = item.partition("=")
        if not sep or not index.strip():
            raise LlmrcaError(f"--real-gpu {item!r}: expected REPLICA=INDEX")
        gpus[name.strip()] = index.strip()
    st = control.up(cfg, run_dir, detach=True, real_gpus=gpus, progress=lambda s: err.print(f"testbed: {s}"))
    p = st["ports"]
    out.print(f"testbed up in {st['run_dir']}: gateway http://127.0.0.1:{p['gateway']}/v1/chat/completions, "
              f"Prometheus http://127.0.0.1:{p['prometheus']}, {len(st['replicas'])} replicas "
              f"({', '.join(st['replicas'])})", highlight=False)


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
    out.print(f"containment: {st['containment']}; spans received: {st['spans']}; Prometheus: {st['prometheus']}",
              highlight=False)
    for rec in st["injections"]:
        out.print(f"active fault: {rec['fault']} on {rec['target']} until {time.ctime(rec['end'])} ({rec['method']})",
                  highlight=False)


@testbed_app.command("inject")
@_handled
def inject_cmd(
    fault: Annotated[str, typer.Argument(help="cpu, memory, network, gpu or replica-kill.")],
    target: Annotated[str, typer.Option("--target", "-t", help="The replica to hit, e.g. ray-replicas-1.")],
    duration: Annotated[float, typer.Option("--duration", "-d", help="Seconds.")] = 60.0,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="NAME=VALUE fault parameter "
                                                                          "(repeatable).")] = None,
    detach: Annotated[bool, typer.Option(help="Return at once; the testbed undoes the fault at its end.")] = False,
    run_dir: RunDirOpt = None,
) -> None:
    """Inject a fault and hold it for DURATION (Ctrl-C undoes it at once).

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
    out.print(json.dumps({k: rec[k] for k in ("id", "fault", "target", "inject_time", "end", "params", "method",
                                              "status")}), highlight=False)


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
) -> None:
    """Build a native case from the telemetry of a time window.

    Example: llmrca testbed collect --since 5m --out cases/live-1
    """
    from llmrca.io import save_case

    now = time.time()
    start = parse_time(since, now)
    end = parse_time(until, now) if until else now
    if prometheus:
        from llmrca.testbed.collector import LabelMap, collect_prometheus_case

        lm = LabelMap.from_dict(json.loads(label_map.read_text(encoding="utf-8"))) if label_map else LabelMap()
        case = collect_prometheus_case(prometheus, start, end, step=step, rate_window=rate_window, labels=lm,
                                       case_id=case_id)
    else:
        from llmrca.testbed.collector import collect_case

        case = collect_case(run_dir, start, end, case_id=case_id, injection_id=injection)
    path = save_case(case, out_dir, overwrite=overwrite)
    o = case.observation
    out.print(f"wrote {path}: {len(o.metrics)} rows x {len(o.metric_columns)} series, {len(o.traces)} spans, "
              f"{len(o.logs)} log lines; truth: {case.truth.fault_type} on {case.truth.service}", highlight=False)


@testbed_app.command("down")
@_handled
def down_cmd(run_dir: RunDirOpt = None) -> None:
    """Stop the testbed: faults undone, every process stopped, nothing left listening."""
    from llmrca.testbed import control

    r = control.down(run_dir)
    out.print(f"testbed down ({r['run_dir']}); no process or port left", highlight=False)


@testbed_app.command("campaign")
@_handled
def campaign_cmd(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the case folders (resumed).")],
    suite: Annotated[str, typer.Option(help="Suite whose faults to run (paper).")] = "paper",
    reps: Annotated[int, typer.Option(help="Repetitions per (fault, target).")] = 1,
    faults: Annotated[str | None, typer.Option(help="Comma list of faults instead of the suite's.")] = None,
    targets: Annotated[str | None, typer.Option(help="Comma list of targets (default: every replica).")] = None,
    normal: Annotated[float, typer.Option(help="Seconds before each injection.")] = 120.0,
    fault_s: Annotated[float, typer.Option("--fault", help="Seconds of fault.")] = 60.0,
    recovery: Annotated[float, typer.Option(help="Seconds after the fault.")] = 60.0,
    warmup: Annotated[float, typer.Option(help="Seconds after start-up before the first case.")] = 30.0,
    replicas: Annotated[int, typer.Option(help="Engine replicas.")] = 4,
    rate: Annotated[float, typer.Option(help="Load, requests/s.")] = 5.0,
    use_running: Annotated[bool, typer.Option(help="Use the testbed already up in --run-dir.")] = False,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    run_dir: RunDirOpt = None,
) -> None:
    """Inject a suite's faults live, one case per (fault, target, rep), with compressed timing.

    Example: llmrca testbed campaign --suite paper --reps 1 --out cases/live
    """
    from llmrca.testbed.campaign import Timing, run_campaign
    from llmrca.testbed.config import TestbedConfig

    cfg = TestbedConfig(replicas=replicas, rate=rate, seed=seed)
    tm = Timing(normal=normal, fault=fault_s, recovery=recovery, warmup=warmup)
    t0 = time.time()
    paths = run_campaign(out_dir, suite=suite, reps=reps, faults=faults.split(",") if faults else None,
                         targets=targets.split(",") if targets else None, timing=tm, config=cfg, run_dir=run_dir,
                         use_running=use_running,
                         progress=lambda s: err.print(f"{time.strftime('%H:%M:%S')} {s}", highlight=False))
    out.print(f"wrote {len(paths)} case(s) under {out_dir} in {time.time() - t0:.0f} s", highlight=False)
