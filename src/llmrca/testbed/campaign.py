"""A campaign: a suite's faults × targets × repetitions, injected live one after another into one running
testbed, each collected as a native case (``<fault>/<target>/rep-NN``), with compressed timing (by default 120 s
normal, 60 s fault, 60 s recovery, instead of the study's 285/60/60)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmrca import __version__
from llmrca.deploy.config import DeployConfig
from llmrca.errors import LlmrcaError
from llmrca.testbed import control
from llmrca.testbed.config import TestbedConfig, live_config
from llmrca.testbed.rundir import RunDir

MANIFEST = "suite.json"
SCENARIO_FILE = "scenario.toml"


@dataclass(frozen=True)
class Timing:
    """One live case's phases. Derived from the deployment's timing (``Timing.of``): normal = ``inject_at``,
    fault = ``fault_duration``, recovery = the rest of ``duration``; the warm-up before the first case is the
    deployment's ``warmup``."""

    normal: float = 120.0  # before the injection
    fault: float = 60.0
    recovery: float = 60.0

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not (isinstance(v, (int, float)) and v >= 0):
                raise LlmrcaError(f"campaign timing: {k} must be a number >= 0, is {v!r}")
        if self.normal <= 0 or self.fault <= 0:
            raise LlmrcaError("campaign timing: normal and fault must be positive")

    @classmethod
    def of(cls, deploy: DeployConfig) -> Timing:
        return cls(normal=deploy.inject_at, fault=deploy.fault_duration,
                   recovery=max(0.0, deploy.duration - deploy.inject_at - deploy.fault_duration))

    @property
    def per_case(self) -> float:
        return self.normal + self.fault + self.recovery


def plan(faults: list[str], targets: list[str], reps: int) -> list[tuple[str, str, int]]:
    """(fault, target, rep) in the order they run: repetition-major, so a slow drift of the machine spreads over
    every fault instead of biasing one."""
    if reps < 1:
        raise LlmrcaError(f"reps must be at least 1, is {reps}")
    return [(f, t, r) for r in range(reps) for f in faults for t in targets]


def own_targets(fault: str, state: dict) -> list[str] | None:
    """The targets of a fault whose targets rule is not the replicas (proxy-overload: the Serve proxy; prompt-surge:
    the workload node), from the live topology; None for a replica fault (the campaign's targets apply)."""
    from llmrca import faults as fault_registry
    from llmrca.testbed.collector import topology_of

    spec = fault_registry.get(fault)
    if spec.targets == "replicas":
        return None
    got = spec.target_services(topology_of(state))
    if not got:
        spec.check_target("", topology_of(state))  # the rule's own one-line reason (no workload node)
    return got


def case_id(fault: str, target: str, rep: int) -> str:
    return f"{fault}/{target}/rep-{rep:02d}"


def run_campaign(out_dir: str | Path, *, suite: str = "live", reps: int = 1, faults: list[str] | None = None,
                 targets: list[str] | None = None, timing: Timing | None = None, config: TestbedConfig | None = None,
                 run_dir: str | Path | None = None, use_running: bool = False, normal_cases: int = 0,
                 progress: Callable[[str], None] | None = None, sleep: Callable[[float], None] = time.sleep
                 ) -> list[Path]:
    """Run the campaign and write its cases (existing case folders are kept: a stopped campaign resumes).

    ``config``: the live deployment (default: the shipped ``live`` scenario's); ``timing``: the phases of each
    case (default: ``Timing.of(config.deploy)``); the warm-up after start-up is ``config.deploy.warmup``.
    ``use_running``: use the testbed already up in ``run_dir`` instead of starting (and stopping) one.
    """
    from llmrca.io import save_case
    from llmrca.io.native import is_native_dir
    from llmrca.scenarios import load
    from llmrca.testbed.collector import collect_case

    cfg = config or live_config()
    tm = timing or Timing.of(cfg.deploy)
    warmup = cfg.deploy.warmup
    out = Path(out_dir)
    say = progress or (lambda s: None)
    faults = list(faults or load(suite).faults)
    rd = RunDir(run_dir)
    started_here = False
    written: list[Path] = []
    if use_running:
        state = control.running_state(rd.path)
    else:
        say(f"starting the testbed in {rd.path}")
        state = control.up(cfg, rd.path, detach=False)
        started_here = True
    try:
        tgts = list(targets or state["replicas"])
        bad = [t for t in tgts if t not in state["replicas"]]
        if bad:
            raise LlmrcaError(f"unknown target(s) {', '.join(bad)}; replicas: {', '.join(state['replicas'])}")
        # a fault above the replicas (the proxy, the workload's client) runs on its own target(s), in plan's order
        own = {f: own_targets(f, state) for f in faults}
        items = [(f, t, r) for f, t, r in plan(faults, tgts, reps) if own[f] is None or t == tgts[0]]
        items = [(f, t, r) for f, t0, r in items for t in (own[f] if own[f] is not None else [t0])]
        items += [("normal", "", r) for r in range(normal_cases)]
        out.mkdir(parents=True, exist_ok=True)
        _write_manifest(out, suite, reps, faults, tgts, tm, state, [case_id(*i) if i[0] != "normal"
                                                                    else f"normal/rep-{i[2]:02d}" for i in items],
                        normal_cases)
        if started_here and warmup > 0:
            say(f"warming up for {warmup:g} s")
            sleep(warmup)
        for k, (fault, target, rep) in enumerate(items, 1):
            cid = case_id(fault, target, rep) if fault != "normal" else f"normal/rep-{rep:02d}"
            folder = out / cid
            if is_native_dir(folder):
                say(f"[{k}/{len(items)}] {cid}: already collected")
                written.append(folder)
                continue
            t0 = time.time()
            say(f"[{k}/{len(items)}] {cid}: normal for {tm.normal:g} s")
            sleep(tm.normal)
            rec_id = None
            if fault != "normal":
                say(f"[{k}/{len(items)}] {cid}: injecting {fault} on {target} for {tm.fault:g} s")
                rec = control.inject(fault, target, tm.fault, run_dir=rd.path, wait=True)
                rec_id = rec["id"]
            else:
                sleep(tm.fault)
            if tm.recovery > 0:
                say(f"[{k}/{len(items)}] {cid}: recovery for {tm.recovery:g} s")
                sleep(tm.recovery)
            t1 = time.time()
            case = collect_case(rd.path, t0, t1, case_id=cid, injection_id=rec_id)
            if fault == "normal" and not case.truth.is_normal:
                raise LlmrcaError(f"{cid}: an injection happened during a normal case")
            written.append(save_case(case, folder, overwrite=True))
            say(f"[{k}/{len(items)}] {cid}: collected ({len(case.observation.metrics)} rows, "
                f"{len(case.observation.metric_columns)} series, {len(case.observation.traces)} spans)")
    finally:
        if started_here:
            say("stopping the testbed")
            control.down(rd.path)
    return written


def _write_manifest(out: Path, suite: str, reps: int, faults: list[str], targets: list[str], tm: Timing,
                    state: dict[str, Any], cases: list[str], normal_cases: int = 0) -> None:
    """suite.json, and scenario.toml: the scenario this campaign runs (the testbed's deployment with the campaign's
    timing, faults, targets and repetitions), which `llmrca testbed campaign --scenario` takes back."""
    from llmrca.deploy.config import ConfigError
    from llmrca.scenarios import Scenario

    cfg = TestbedConfig.from_dict(state["config"])
    manifest: dict[str, Any] = {
        "suite": suite, "generator": "llmrca.testbed", "version": __version__, "reps": reps, "faults": faults,
        "targets": targets, "timing": {**asdict(tm), "warmup": cfg.deploy.warmup}, "config": state["config"],
        "scaling": state.get("scaling"), "cases": cases}
    try:
        deploy = cfg.deploy.with_(inject_at=tm.normal, fault_duration=tm.fault, duration=tm.per_case)
    except ConfigError as e:  # a timing the deployment model cannot express (e.g. not a multiple of the step)
        manifest["scenario"] = None
        manifest["scenario_error"] = str(e)
    else:
        sc = Scenario(name=suite, description=f"live campaign of {suite} on the testbed", deploy=deploy,
                      faults=tuple(faults), targets=tuple(targets), reps=reps, normal=normal_cases, seed=cfg.seed)
        (out / SCENARIO_FILE).write_text(sc.to_toml(), encoding="utf-8")
        manifest.update({"scenario_file": SCENARIO_FILE, "scenario_sha256": sc.sha256(),
                         "scenario": sc.to_document()})
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
