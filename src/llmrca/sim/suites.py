"""Suites of simulated cases: a scenario's faults × targets × repetitions (+ fault-free runs), written as native
case folders.

A suite is a scenario (``llmrca.scenarios``): ``paper`` is the reference study's experiment (4 faults × the 4
replicas × 10 repetitions of a 360 s run, fault at 285 s for 60 s), ``demo`` a small, quick version of it, both
shipped as TOML files; any scenario file works the same way. Overrides (and ``--set``) make held-out variants of a
scenario (other replica counts, loads, fault strengths, GPU kinds, model sizes) without changing its physics.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from llmrca import __version__
from llmrca import faults as fault_registry
from llmrca.deploy.config import path_of
from llmrca.errors import UnknownNameError
from llmrca.faults import Injection
from llmrca.scenarios import Scenario, load, shipped
from llmrca.sim.config import SimConfig
from llmrca.sim.deployment import deployment

MANIFEST = "suite.json"
SCENARIO_FILE = "scenario.toml"  # the scenario a suite was made with, every value resolved, next to suite.json
# Overrides that are not SimConfig fields, and the scenario keys they set.
SUITE_KEYS = ("strength", "fault_params", "faults")
ALIASES = {"load": "rate", "gpu_kind": "gpu", "model_size": "model"}

Suite = Scenario  # a suite is a scenario; the name stays for callers that knew suites first
ScenarioRef = str | Path | Scenario


def suites() -> list[Scenario]:
    """The shipped scenarios (``paper``, ``demo``, ``live``)."""
    return [load(n) for n in shipped()]


def get_suite(name: str) -> Scenario:
    """A shipped scenario by name (``--suite NAME`` is a synonym of ``--scenario NAME``)."""
    if name not in shipped():
        raise UnknownNameError(f"unknown suite {name!r}; known: {', '.join(shipped())}")
    return load(name)


@dataclass(frozen=True)
class CaseSpec:
    case_id: str  # also the folder, relative to the suite's root
    config: SimConfig
    injection: Injection | tuple[Injection, ...] | None  # a tuple: a multi-fault case
    seed: int
    rep: int


def overrides_to_sets(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Suite overrides (SimConfig fields and their aliases, ``strength``, ``fault_params``, ``faults``) as the
    scenario keys they change (``{"replicas": 6}`` → ``{"deployment.replicas": 6}``)."""
    cfg_keys = {f.name for f in fields(SimConfig)}
    out: dict[str, Any] = {}
    for k, v in (overrides or {}).items():
        k = ALIASES.get(k, k)
        if k == "strength":
            out["faults.strength"] = v
        elif k == "faults":
            out["faults.types"] = list(v) if v is not None else []
        elif k == "fault_params":
            for fault, params in (v or {}).items():
                if fault not in fault_registry.ids():
                    raise UnknownNameError(f"fault_params names unknown fault {fault!r}; known: "
                                           f"{', '.join(fault_registry.ids())}")
                for name, value in (params or {}).items():
                    out[f"faults.{fault}.{name}"] = value
        elif k in cfg_keys:
            out[path_of(k)] = v
        else:
            raise UnknownNameError(
                f"unknown suite override {k!r}; use a SimConfig field ({', '.join(sorted(cfg_keys))}) or one of "
                f"{', '.join(SUITE_KEYS)}"
            )
    return out


def resolve(scenario: ScenarioRef = "paper", *, reps: int | None = None, seed: int | None = None,
            normal: int | None = None, overrides: Mapping[str, Any] | None = None,
            sets: Iterable[str] | Mapping[str, Any] | None = None) -> Scenario:
    """The scenario a suite is made from: a shipped name, a TOML file or a ``Scenario``, with ``sets``
    (``"table.key=value"``), ``overrides`` (the older dict form) and ``reps``/``seed``/``normal`` applied (``None``:
    the scenario's own), validated."""
    s = scenario if isinstance(scenario, Scenario) else load(scenario)
    changes: dict[str, Any] = {}
    if sets:
        s = s.with_sets(sets)
    changes.update(overrides_to_sets(overrides))
    for k, v in (("reps", reps), ("seed", seed), ("normal", normal)):
        if v is not None:
            changes[k] = int(v)
    return s.with_sets(changes) if changes else s


def fault_params(fault: str, config: SimConfig, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a suite uses for ``fault``: the study's, scaled by ``strength``; on another GPU kind the
    power cap keeps the study's fraction of the default limit (150 W of an A100's 400 W) unless given in watts."""
    spec = fault_registry.get(fault)
    given = dict((extra.get("fault_params") or {}).get(fault, {}))
    strength = extra.get("strength")
    if strength is not None:
        params = spec.scaled(float(strength))
    elif fault == "gpu" and config.gpu_kind.name != SimConfig().gpu_kind.name and "power_limit_w" not in given:
        params = spec.scaled(1.0)
    else:
        params = spec.resolve()
    params.update(given)
    if fault == "gpu" and "depth" not in given and ({"power_limit_w", "power_limit_frac"} & set(given)):
        params["depth"] = None  # a cap the user gave in watts (or as a fraction) wins over the strength's depth
    return spec.resolve(params)


def plan(scenario: ScenarioRef = "paper", *, reps: int | None = None, seed: int | None = None,
         normal: int | None = None, overrides: Mapping[str, Any] | None = None,
         sets: Iterable[str] | Mapping[str, Any] | None = None) -> list[CaseSpec]:
    """The cases of a scenario, in a fixed order, each with its own seed from (seed, fault, target, rep)."""
    return plan_of(resolve(scenario, reps=reps, seed=seed, normal=normal, overrides=overrides, sets=sets))


def plan_of(s: Scenario) -> list[CaseSpec]:
    """The cases of a resolved scenario: faults in the scenario's order, then its targets, then repetitions; the
    fault-free runs last."""
    from llmrca.sim.run import derive_seed

    config = s.deploy
    width = max(2, len(str(max(s.reps, s.normal, 1) - 1)))
    topo = deployment(config).topology()
    out: list[CaseSpec] = []
    for f in s.faults:
        spec = fault_registry.get(f)
        params = s.params(f)
        if not spec.target_services(topo):  # e.g. prompt-surge without a workload node: say why, not 0 cases
            spec.check_target("", topo)
        targets = [t for t in spec.target_services(topo) if s.targets is None or t in s.targets]
        for target in targets:
            for rep in range(s.reps):
                cid = f"{f}/{target}/rep-{rep:0{width}d}"
                out.append(CaseSpec(cid, config, Injection(f, target, params), derive_seed(s.seed, f, target, rep),
                                    rep))
    out += multi_specs(s, width)
    for rep in range(s.normal):
        out.append(CaseSpec(f"normal/rep-{rep:0{width}d}", config, None, derive_seed(s.seed, "normal", "", rep),
                            rep))
    return out


PLACEMENTS = ("overlap", "sequence")


def multi_specs(s: Scenario, width: int = 2) -> list[CaseSpec]:
    """``multi`` two-fault cases per repetition: the pair of fault types (two different ones where the scenario
    has two), their targets (different services) and the placement drawn from the suite seed. ``overlap``: the
    second fault starts halfway through the first; ``sequence``: when the first ends, the pair moved earlier where
    needed so that the second lasts the whole fault duration. The second fault is cut to end with the run. Named
    ``multi/<f1>+<f2>/<t1>+<t2>/rep-NN``, NN counting the
    repetition's cases (rep × multi + i)."""
    import numpy as np

    from llmrca.sim.run import derive_seed

    if not s.multi or not s.faults:
        return []
    config = s.deploy
    topo = deployment(config).topology()
    start, dur, end = float(config.inject_at), float(config.fault_duration), float(config.duration)
    targets = {f: [t for t in fault_registry.get(f).target_services(topo) if s.targets is None or t in s.targets]
               for f in s.faults}
    width = max(width, len(str(max(s.reps * s.multi, 1) - 1)))
    out: list[CaseSpec] = []
    for rep in range(s.reps):
        for i in range(s.multi):
            rng = np.random.default_rng(derive_seed(s.seed, "multi", rep, i))
            kinds = list(s.faults)
            f1 = kinds[int(rng.integers(len(kinds)))]
            rest = [f for f in kinds if f != f1] or kinds
            f2 = rest[int(rng.integers(len(rest)))]
            t1 = targets[f1][int(rng.integers(len(targets[f1])))]
            others = [t for t in targets[f2] if t != t1]
            if not others:
                raise UnknownNameError(f"faults.multi: the {f2} fault has no target other than {t1}")
            t2 = others[int(rng.integers(len(others)))]
            placement = PLACEMENTS[int(rng.integers(len(PLACEMENTS)))]
            # In sequence the pair is moved earlier, as far as needed for the second fault to last its whole
            # duration (the study's timing leaves 15 s after a first fault at 285 s): a cut-short second fault may
            # show nothing, and the case would carry a label its telemetry does not show.
            first = max(min(start, end - 2 * dur), dur) if placement == "sequence" else start
            second = first + (dur / 2 if placement == "overlap" else dur)
            if second >= end:
                raise UnknownNameError(f"faults.multi: a {placement} second fault would start at {second:g} s, "
                                       f"after the run's end ({end:g} s)")
            n = rep * s.multi + i
            cid = f"multi/{f1}+{f2}/{t1}+{t2}/rep-{n:0{width}d}"
            pair = (Injection(f1, t1, s.params(f1), start=None if first == start else first),
                    Injection(f2, t2, s.params(f2), start=second, duration=min(dur, end - second)))
            out.append(CaseSpec(cid, config, pair, derive_seed(s.seed, "multi", f1, f2, t1, t2, n), rep))
    return out


def _make(spec: CaseSpec, root: str, suite: str, suite_seed: int, overrides: dict[str, Any],
          overwrite: bool) -> str:
    from llmrca.io import save_case
    from llmrca.sim.run import simulate

    case = simulate(spec.config, spec.injection, spec.seed, case_id=spec.case_id, provenance={
        "suite": suite, "suite_seed": suite_seed, "rep": spec.rep, "overrides": overrides,
    })
    case.validate()
    from llmrca.sim.twin import check as check_against_twin

    # A fault case must differ from its fault-free twin; a multi-fault case, for each fault, from the run without it.
    check_against_twin(case, spec.config, spec.seed, spec.injection)
    return str(save_case(case, Path(root) / spec.case_id, overwrite=overwrite))


Progress = Callable[[int, int, str], None]


def generate_suite(
    scenario: ScenarioRef = "paper",
    out_dir: str | Path = "cases",
    reps: int | None = None,
    seed: int | None = None,
    jobs: int = 1,
    normal: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    progress: bool | Progress = True,
    *,
    sets: Iterable[str] | Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Simulate a scenario's suite and write one native case folder per case under ``out_dir``, plus
    ``suite.json`` (how it was made, the case list, the scenario and its SHA-256) and ``scenario.toml`` (the
    scenario actually used, every value resolved: ``llmrca generate --scenario OUT/scenario.toml`` makes the same
    suite again).

    ``scenario``: a shipped name (``paper``, ``demo``), a TOML file, or a ``Scenario``. Folders and case ids are
    ``<fault>/<target>/rep-NN`` (``normal/rep-NN`` for fault-free runs). ``reps``, ``seed``, ``normal`` default to
    the scenario's (paper: 10 reps, seed 0); ``sets``: ``"table.key=value"`` changes; ``overrides``: the older
    dict form (SimConfig fields such as ``replicas``, ``rate``, ``gpu``, ``model``, and ``strength`` (scales every
    fault), ``fault_params`` ({fault: {param: value}}), ``faults`` (a subset)). ``jobs`` worker processes share the
    work, and the bytes written do not depend on it. Existing case folders are an error unless ``overwrite``.
    """
    root = Path(out_dir)
    s = resolve(scenario, reps=reps, seed=seed, normal=normal, overrides=overrides, sets=sets)
    specs = plan_of(s)
    if not overwrite:
        clash = [c.case_id for c in specs if (root / c.case_id).exists()]
        if clash:
            raise FileExistsError(f"{root / clash[0]}: already exists ({len(clash)} case folder(s) would be "
                                  "overwritten; pass overwrite=True or choose another folder)")
    root.mkdir(parents=True, exist_ok=True)
    over = json.loads(json.dumps(dict(overrides or {})))
    report = _reporter(progress)
    n = len(specs)
    done: dict[str, str] = {}
    if jobs <= 1 or n <= 1:
        for i, c in enumerate(specs):
            done[c.case_id] = _make(c, str(root), s.name, s.seed, over, overwrite)
            report(i + 1, n, c.case_id)
    else:
        with ProcessPoolExecutor(max_workers=int(jobs)) as pool:
            futs = {pool.submit(_make, c, str(root), s.name, s.seed, over, overwrite): c for c in specs}
            for k, fut in enumerate(as_completed(futs)):
                c = futs[fut]
                done[c.case_id] = fut.result()
                report(k + 1, n, c.case_id)
    text = s.to_toml()
    _write_atomic(root, SCENARIO_FILE, text)
    _write_atomic(root, MANIFEST, json.dumps({
        "suite": s.name, "seed": s.seed, "reps": s.reps, "normal": s.normal,
        "overrides": over, "generator": "llmrca.sim", "version": __version__,
        "scenario_file": SCENARIO_FILE, "scenario_sha256": s.sha256(), "scenario": s.to_document(),
        "cases": [c.case_id for c in specs],
    }, indent=2) + "\n")
    return [Path(done[c.case_id]) for c in specs]


def _reporter(progress: bool | Progress) -> Progress:
    if callable(progress):
        return progress
    if not progress:
        return lambda i, n, cid: None
    from llmrca.progress import PlainProgress, is_terminal

    if not is_terminal():  # off a terminal a \r-rewritten line never ends: plain lines every 10 s
        plain: list[PlainProgress] = []
        started = time.monotonic()  # the first line comes after the first case: its time counts

        def lines(i: int, n: int, cid: str) -> None:
            if not plain:
                plain.append(PlainProgress("simulate", n, started=started))
            plain[0].update(i, cid)

        return lines

    def show(i: int, n: int, cid: str) -> None:
        end = "\n" if i == n else ""
        print(f"\r[{i}/{n}] {cid:<40}", end=end, file=sys.stderr, flush=True)

    return show


def _write_atomic(root: Path, name: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=root)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, root / name)
