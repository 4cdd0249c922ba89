"""A scenario: one TOML file that says everything a suite of cases needs — the deployment, its workload, telemetry
settings and noise (the tables of ``llmrca.deploy.config.DeployConfig``), the timing of a run, the faults with
their parameters and targets, the repetitions and the seed. See docs/scenarios.md for the format.

``load("paper")`` reads a shipped scenario, ``load("my.toml", sets=["deployment.replicas=6"])`` a file with
changes; the result is a validated ``Scenario``; ``to_toml()`` writes it back out with every value resolved.
Every error is one line that names the file and the key (``scenario x.toml: deployment.replicas must be ...``).
"""

from __future__ import annotations

import difflib
import hashlib
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from llmrca.deploy.config import TABLES, DeployConfig, default_of, path_of, table_fields
from llmrca.errors import LlmrcaError, UnknownNameError
from llmrca.scenarios import toml_text

TOP_KEYS = ("name", "description", "seed", "reps", "normal")
FAULT_KEYS = ("types", "targets", "strength")
MULTI_KEY = "multi"  # two-fault cases per repetition; kept out of FAULT_KEYS, whose text error messages list
ALL_TABLES = (*TABLES, "faults")
SUFFIX = ".toml"


class ScenarioError(LlmrcaError, ValueError):
    """A scenario file or a ``--set`` has an unknown key, a wrong type or an impossible value; one line naming
    the file and the key."""


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    deploy: DeployConfig
    faults: tuple[str, ...]  # fault ids, in the order their cases are listed
    targets: tuple[str, ...] | None = None  # None: every service each fault may hit
    strength: float | None = None  # None: the registry's reference parameters
    fault_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # as given, per fault id
    reps: int = 1  # repetitions per (fault, target)
    normal: int = 0  # fault-free runs
    seed: int = 0  # suite seed: every case's seed derives from it
    multi: int = 0  # two-fault cases per repetition ([faults] multi; llmrca.sim.suites.multi_specs)
    source: str = field(default="", compare=False)  # where it was read from, for messages

    def params(self, fault: str) -> dict[str, Any]:
        """The parameters the cases of ``fault`` use (strength and given parameters applied, via the registry)."""
        from llmrca.sim.suites import fault_params

        return fault_params(fault, self.deploy, {"strength": self.strength, "fault_params": self.fault_params})

    def to_document(self) -> dict[str, Any]:
        """Every value resolved, as the TOML tables hold it (``None``: not set)."""
        doc: dict[str, Any] = {"name": self.name, "description": self.description, "seed": self.seed,
                               "reps": self.reps, "normal": self.normal}
        values = self.deploy.to_dict()
        for table in TABLES:
            # a field the recorded config leaves out at its default is left out here too (the same bytes)
            doc[table] = {k: values[f.name] for k, f in table_fields(table).items() if f.name in values}
        faults: dict[str, Any] = {"types": list(self.faults),
                                  "targets": list(self.targets) if self.targets is not None else None,
                                  "strength": self.strength}
        if self.multi:  # written only when set, so a scenario without multi-fault cases keeps its text
            faults["multi"] = self.multi
        for fid, given in self.fault_params.items():
            faults[fid] = dict(given)
        doc["faults"] = faults
        return doc

    def to_toml(self) -> str:
        head = f"# scenario {self.name}: {self.description}\n" if self.description else f"# scenario {self.name}\n"
        return head + toml_text.dumps(self.to_document())

    def sha256(self) -> str:
        return hashlib.sha256(self.to_toml().encode("utf-8")).hexdigest()

    def with_sets(self, sets: Iterable[str] | Mapping[str, Any]) -> Scenario:
        """This scenario with ``table.key=value`` changes applied (and validated again)."""
        doc = apply_sets(self.to_document(), sets, self.source)
        return from_document(doc, self.source)


# --------------------------------------------------------------------------------------------- reading


def shipped() -> list[str]:
    """Names of the scenarios shipped with llmrca (files in this package)."""
    return sorted(p.name[: -len(SUFFIX)] for p in resources.files(__package__).iterdir()
                  if p.name.endswith(SUFFIX))


def load(ref: str | Path, sets: Iterable[str] | Mapping[str, Any] | None = None) -> Scenario:
    """A shipped scenario (by name) or a TOML file (by path), with ``sets`` applied, validated."""
    doc, source = read_document(ref)
    default_name = Path(source).stem
    if sets:
        doc = apply_sets(doc, sets, source)
        source += " with --set"
    return from_document(doc, source, default_name=default_name)


def read_document(ref: str | Path) -> tuple[dict[str, Any], str]:
    """The TOML tables of a scenario file or a shipped scenario, and a label for messages."""
    text_ref = str(ref)
    path = Path(text_ref)
    if path.is_file():
        label = text_ref
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ScenarioError(f"scenario {label}: cannot read it ({e.strerror or e})") from None
    elif text_ref in shipped():
        label = text_ref + SUFFIX
        text = resources.files(__package__).joinpath(label).read_text(encoding="utf-8")
    elif text_ref.endswith(SUFFIX) or "/" in text_ref:
        raise FileNotFoundError(f"scenario {text_ref}: no such file")
    else:
        raise UnknownNameError(f"unknown scenario {text_ref!r}: no such file and no shipped scenario of that "
                               f"name; shipped: {', '.join(shipped())}")
    try:
        return tomllib.loads(text), label
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"scenario {label}: not valid TOML ({e})") from None


def parse_value(text: str) -> Any:
    """A ``--set`` value as a TOML scalar or array (``6``, ``0.5``, ``true``, ``"x"``, ``["cpu", "gpu"]``); a bare
    word that is not TOML (``h100``) is the string itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_sets(doc: dict[str, Any], sets: Iterable[str] | Mapping[str, Any], source: str) -> dict[str, Any]:
    """``doc`` with each ``dotted.key=value`` set (values of a mapping are taken as they are)."""
    import copy

    out = copy.deepcopy(doc)
    items = sets.items() if isinstance(sets, Mapping) else [_split_set(s, source) for s in sets]
    for dotted, v in items:
        parts = [p.strip() for p in str(dotted).split(".")]
        if not all(parts):
            raise ScenarioError(f"scenario {source}: --set {dotted}: empty part in the key")
        node = out
        for i, p in enumerate(parts[:-1]):
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ScenarioError(f"scenario {source}: --set {dotted}: {'.'.join(parts[: i + 1])} is a value, "
                                    "not a table")
            node = nxt
        if parts == ["noise"] and isinstance(node.get("noise"), dict) and not isinstance(v, dict):
            node["noise"]["level"] = v  # `--set noise=none`: the level, keeping the table's other keys
        else:
            node[parts[-1]] = v
    return out


def _split_set(item: str, source: str) -> tuple[str, Any]:
    k, sep, v = str(item).partition("=")
    if not sep or not k.strip():
        raise ScenarioError(f"scenario {source}: --set {item!r}: expected KEY=VALUE (e.g. deployment.replicas=6)")
    return k.strip(), parse_value(v.strip())


# --------------------------------------------------------------------------------------------- validating


def from_document(doc: Mapping[str, Any], source: str, *, default_name: str = "scenario") -> Scenario:
    """Validate the TOML tables of a scenario and build it; the first problem found is raised, naming its key.
    ``default_name``: the name when the document has none (a file's stem)."""
    where = f"scenario {source}"

    def fail(msg: str) -> ScenarioError:
        return ScenarioError(f"{where}: {msg}")

    if isinstance(doc.get("noise"), str):  # `noise = "none"` is short for [noise] level = "none"
        doc = {**doc, "noise": {"level": doc["noise"]}}

    for k, v in doc.items():
        if k in ALL_TABLES and not isinstance(v, dict):
            raise fail(f"{k} must be a table ([{k}]), is {v!r}")
        if isinstance(v, dict):
            if k not in ALL_TABLES:
                raise fail(f"unknown table [{k}]{_maybe(k, ALL_TABLES)}; known tables: {', '.join(ALL_TABLES)}")
        elif k not in TOP_KEYS:
            hint = (f" (it belongs in [{_table_of_key(k)}])" if _table_of_key(k) else "")
            raise fail(f"unknown key {k}{hint}; known top-level keys: {', '.join(TOP_KEYS)}")

    name = _typed(doc.get("name", default_name), "name", str, fail)
    description = _typed(doc.get("description", ""), "description", str, fail)
    seed = _typed(doc.get("seed", 0), "seed", int, fail)
    reps = _typed(doc.get("reps", 1), "reps", int, fail)
    normal = _typed(doc.get("normal", 0), "normal", int, fail)
    for k, v in (("reps", reps), ("normal", normal)):
        if v < 0:
            raise fail(f"{k} must be >= 0, is {v}")

    values: dict[str, Any] = {}
    for table in TABLES:
        given = doc.get(table, {})
        known = table_fields(table)
        for k, v in given.items():
            if k not in known:
                raise fail(f"unknown key {table}.{k}{_maybe(k, known)}; known in [{table}]: {', '.join(known)}")
            f = known[k]
            values[f.name] = _typed(v, f"{table}.{k}", _kind(f.type), fail, optional="None" in str(f.type))
    try:
        deploy = DeployConfig(**values)
    except LlmrcaError as e:
        probe = DeployConfig.__new__(DeployConfig)  # the same checks, reported per key
        for f in fields(DeployConfig):
            object.__setattr__(probe, f.name, values.get(f.name, default_of(f)))
        problems = probe.field_problems()
        raise fail(_keyed(*problems[0]) if problems else str(e)) from None

    faults_doc = doc.get("faults", {})
    scenario = Scenario(name=name, description=description, deploy=deploy,
                        faults=_fault_types(faults_doc, fail), targets=None, strength=None,
                        fault_params={}, reps=reps, normal=normal, seed=seed, source=source)
    return _with_faults(scenario, faults_doc, fail)


def _with_faults(s: Scenario, doc: Mapping[str, Any], fail) -> Scenario:
    from dataclasses import replace

    from llmrca import faults as registry
    from llmrca.scenarios.checks import deployment_problems
    from llmrca.sim.deployment import deployment

    known_ids = registry.ids()
    given: dict[str, dict[str, Any]] = {}
    for k, v in doc.items():
        if k in FAULT_KEYS or k == MULTI_KEY:
            continue
        if k not in known_ids:
            raise fail(f"unknown key faults.{k}: neither {', '.join(FAULT_KEYS)} nor a fault; known faults: "
                       f"{', '.join(known_ids)}")
        if not isinstance(v, dict):
            raise fail(f"faults.{k} must be a table of parameters ([faults.{k}]), is {v!r}")
        names = [p.name for p in registry.get(k).params]
        for p in v:
            if p not in names:
                raise fail(f"unknown key faults.{k}.{p}: not a parameter of the {k} fault; known: "
                           f"{', '.join(names)}")
        given[k] = dict(v)
    strength = doc.get("strength")
    if strength is not None:
        strength = float(_typed(strength, "faults.strength", float, fail))
        if not strength > 0:
            raise fail(f"faults.strength must be > 0, is {strength:g}")
    targets = doc.get("targets")
    if targets is not None:
        targets = tuple(_typed_list(targets, "faults.targets", fail))
    multi = int(_typed(doc.get("multi", 0), "faults.multi", int, fail))
    if multi < 0:
        raise fail(f"faults.multi must be >= 0, is {multi}")
    s = replace(s, targets=targets, strength=strength, fault_params=given, multi=multi)
    topo = deployment(s.deploy).topology()
    for fid in dict.fromkeys((*s.faults, *given)):
        try:
            params = s.params(fid)
        except LlmrcaError as e:
            raise fail(f"faults.{fid}: {e}") from None
        problems = deployment_problems(fid, params, s.deploy)
        if problems:
            raise fail(problems[0])
        if targets is not None and fid in s.faults:
            allowed = registry.get(fid).target_services(topo)
            bad = [t for t in targets if t not in allowed]
            if bad:
                raise fail(f"faults.targets: the {fid} fault cannot target {', '.join(bad)}; with "
                           f"{s.deploy.replicas} replicas its targets are {', '.join(allowed)}")
    return s


def _fault_types(doc: Mapping[str, Any], fail) -> tuple[str, ...]:
    from llmrca import faults as registry

    types = tuple(_typed_list(doc.get("types", []), "faults.types", fail))
    for f in types:
        if f not in registry.ids():
            raise fail(f"faults.types: unknown fault {f!r}; known: {', '.join(registry.ids())}")
    if len(set(types)) != len(types):
        raise fail(f"faults.types names a fault twice: {', '.join(types)}")
    return types


def _kind(annotation: Any) -> type:
    text = str(annotation)
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if text.startswith(name):
            return kind
    raise TypeError(f"deploy config field of unsupported type {text}")


_KIND_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def _typed(v: Any, key: str, kind: type, fail, optional: bool = False) -> Any:
    """``v`` checked against ``kind`` (an int is a float too, and becomes one, so a file that writes ``rate = 5``
    makes the same config and the same bytes as ``rate = 5.0``)."""
    if v is None and optional:
        return None
    ok = (isinstance(v, bool) if kind is bool else
          (isinstance(v, int) and not isinstance(v, bool)) if kind is int else
          (isinstance(v, (int, float)) and not isinstance(v, bool)) if kind is float else isinstance(v, kind))
    if not ok:
        raise fail(f"{key} must be {_KIND_WORDS[kind]}, is {v!r}")
    return float(v) if kind is float else v


def _typed_list(v: Any, key: str, fail) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise fail(f"{key} must be a list of names, is {v!r}")
    return list(v)


def _keyed(name: str, text: str) -> str:
    """A DeployConfig message with its leading field name written as the scenario key."""
    return path_of(name) + text[len(name):] if text.startswith(name) else f"{path_of(name)}: {text}"


def _table_of_key(k: str) -> str | None:
    for table in TABLES:
        if k in table_fields(table):
            return table
    return None


def _maybe(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


__all__ = ["Scenario", "ScenarioError", "apply_sets", "from_document", "load", "parse_value", "read_document",
           "shipped"]
