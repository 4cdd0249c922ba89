"""Suites of simulated cases: faults × targets × repetitions (+ fault-free runs), written as native case folders.

``paper`` is the reference study's experiment (4 faults × the 4 replicas × 10 repetitions of a 360 s run, fault at
285 s for 60 s); ``demo`` is a small, quick version of it. Overrides make held-out variants of a suite (other
replica counts, loads, fault strengths, GPU kinds, model sizes) without changing its physics.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from llmrca import __version__
from llmrca import faults as fault_registry
from llmrca.errors import UnknownNameError
from llmrca.faults import FaultParamError, Injection
from llmrca.sim.config import SimConfig
from llmrca.sim.deployment import deployment

MANIFEST = "suite.json"
# Overrides that are not SimConfig fields.
SUITE_KEYS = ("strength", "fault_params", "faults")
ALIASES = {"load": "rate", "gpu_kind": "gpu", "model_size": "model"}


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    faults: tuple[str, ...]
    reps: int  # default repetitions per (fault, target)
    config: dict[str, Any] = field(default_factory=dict)  # SimConfig fields that differ from the defaults


_SUITES: dict[str, Suite] = {}


def register(suite: Suite) -> None:
    _SUITES[suite.name] = suite


register(Suite(
    "paper",
    "the reference study: cpu, memory, network and gpu faults on each of the 4 vLLM replicas, 10 repetitions of "
    "a 360 s run at 5 req/s, fault injected at 285 s for 60 s",
    ("cpu", "memory", "network", "gpu"), 10,
))
register(Suite(
    "demo",
    "a quick look: the paper's 4 faults × 4 replicas × 2 repetitions of a 240 s run (fault at 165 s for 60 s)",
    ("cpu", "memory", "network", "gpu"), 2, {"duration": 240.0, "inject_at": 165.0},
))


def suites() -> list[Suite]:
    return list(_SUITES.values())


def get_suite(name: str) -> Suite:
    try:
        return _SUITES[name]
    except KeyError:
        raise UnknownNameError(f"unknown suite {name!r}; known: {', '.join(_SUITES)}") from None


@dataclass(frozen=True)
class CaseSpec:
    case_id: str  # also the folder, relative to the suite's root
    config: SimConfig
    injection: Injection | None
    seed: int
    rep: int


def _split_overrides(overrides: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg_keys = {f.name for f in fields(SimConfig)}
    cfg, extra = {}, {}
    for k, v in (overrides or {}).items():
        k = ALIASES.get(k, k)
        if k in SUITE_KEYS:
            extra[k] = v
        elif k in cfg_keys:
            cfg[k] = v
        else:
            raise UnknownNameError(
                f"unknown suite override {k!r}; use a SimConfig field ({', '.join(sorted(cfg_keys))}) or one of "
                f"{', '.join(SUITE_KEYS)}"
            )
    return cfg, extra


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
    return spec.resolve(params)


def plan(name: str = "paper", *, reps: int | None = None, seed: int = 0, normal: int = 0,
         overrides: Mapping[str, Any] | None = None) -> list[CaseSpec]:
    """The cases of a suite, in a fixed order, each with its own seed from (seed, fault, target, rep)."""
    from llmrca.sim.run import derive_seed

    suite = get_suite(name)
    cfg_over, extra = _split_overrides(overrides)
    config = SimConfig(**{**suite.config, **cfg_over})
    reps = suite.reps if reps is None else int(reps)
    if reps < 0 or normal < 0:
        raise FaultParamError(f"reps and normal must be >= 0 (got reps={reps}, normal={normal})")
    unknown_faults = [f for f in (extra.get("fault_params") or {}) if f not in fault_registry.ids()]
    if unknown_faults:
        raise UnknownNameError(f"fault_params names unknown fault(s) {', '.join(unknown_faults)}")
    chosen = tuple(extra.get("faults") or suite.faults)
    for f in chosen:
        fault_registry.get(f)
    width = max(2, len(str(max(reps, normal, 1) - 1)))
    topo = deployment(config).topology()
    out: list[CaseSpec] = []
    for f in chosen:
        spec = fault_registry.get(f)
        params = fault_params(f, config, extra)
        for target in spec.target_services(topo):
            for rep in range(reps):
                cid = f"{f}/{target}/rep-{rep:0{width}d}"
                out.append(CaseSpec(cid, config, Injection(f, target, params), derive_seed(seed, f, target, rep), rep))
    for rep in range(normal):
        out.append(CaseSpec(f"normal/rep-{rep:0{width}d}", config, None, derive_seed(seed, "normal", "", rep), rep))
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

    check_against_twin(case, spec.config, spec.seed)  # a fault case must differ from its fault-free twin
    return str(save_case(case, Path(root) / spec.case_id, overwrite=overwrite))


Progress = Callable[[int, int, str], None]


def generate_suite(
    name: str = "paper",
    out_dir: str | Path = "cases",
    reps: int | None = None,
    seed: int = 0,
    jobs: int = 1,
    normal: int = 0,
    overrides: Mapping[str, Any] | None = None,
    progress: bool | Progress = True,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Simulate a suite and write one native case folder per case under ``out_dir`` (plus ``suite.json``).

    Folders and case ids are ``<fault>/<target>/rep-NN`` (``normal/rep-NN`` for fault-free runs). ``reps`` defaults
    to the suite's own (paper 10, demo 2); ``jobs`` worker processes share the work, and the bytes written do not
    depend on it. ``overrides``: SimConfig fields (``replicas``, ``rate``, ``gpu``, ``model``, ...) and
    ``strength`` (scales every fault), ``fault_params`` ({fault: {param: value}}), ``faults`` (a subset).
    Existing case folders are an error unless ``overwrite``.
    """
    root = Path(out_dir)
    specs = plan(name, reps=reps, seed=seed, normal=normal, overrides=overrides)
    if not overwrite:
        clash = [s.case_id for s in specs if (root / s.case_id).exists()]
        if clash:
            raise FileExistsError(f"{root / clash[0]}: already exists ({len(clash)} case folder(s) would be "
                                  "overwritten; pass overwrite=True or choose another folder)")
    root.mkdir(parents=True, exist_ok=True)
    over = json.loads(json.dumps(dict(overrides or {})))
    report = _reporter(progress)
    n = len(specs)
    done: dict[str, str] = {}
    if jobs <= 1 or n <= 1:
        for i, s in enumerate(specs):
            done[s.case_id] = _make(s, str(root), name, seed, over, overwrite)
            report(i + 1, n, s.case_id)
    else:
        with ProcessPoolExecutor(max_workers=int(jobs)) as pool:
            futs = {pool.submit(_make, s, str(root), name, seed, over, overwrite): s for s in specs}
            for k, fut in enumerate(as_completed(futs)):
                s = futs[fut]
                done[s.case_id] = fut.result()
                report(k + 1, n, s.case_id)
    _write_manifest(root, {
        "suite": name, "seed": seed, "reps": reps if reps is not None else get_suite(name).reps, "normal": normal,
        "overrides": over, "generator": "llmrca.sim", "version": __version__,
        "cases": [s.case_id for s in specs],
    })
    return [Path(done[s.case_id]) for s in specs]


def _reporter(progress: bool | Progress) -> Progress:
    if callable(progress):
        return progress
    if not progress:
        return lambda i, n, cid: None

    def show(i: int, n: int, cid: str) -> None:
        end = "\n" if i == n else ""
        print(f"\r[{i}/{n}] {cid:<40}", end=end, file=sys.stderr, flush=True)

    return show


def _write_manifest(root: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".suite.", dir=root)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, root / MANIFEST)
