"""Checks of method parameters, done when a method runs (constructors only store them, as in scikit-learn)."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from pathlib import Path

from llmrca.errors import FormatError, LlmrcaError, MethodError, UnknownNameError


def check_int(method: str, name: str, value: object, *, minimum: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = " or None" if allow_none else ""
        raise MethodError(f"method {method!r}: parameter {name} must be an integer >= {minimum}{extra}, got {value!r}")
    return value


def check_float(method: str, name: str, value: object, *, low: float, high: float, low_open: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    v = float(value) if ok else float("nan")  # type: ignore[arg-type]
    if not ok or not (v > low if low_open else v >= low) or not v <= high:
        left = "(" if low_open else "["
        raise MethodError(f"method {method!r}: parameter {name} must be a number in {left}{low:g}, {high:g}], "
                          f"got {value!r}")
    return v


def check_bool(method: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise MethodError(f"method {method!r}: parameter {name} must be true or false, got {value!r}")
    return value


# --- parameters given from outside a method (`--param METHOD.KEY=VALUE`, `--params FILE.toml`,
# `evaluate(method_params=...)`): checked once, before a run starts, so a typo is one line and not an error row per
# case. Each value must have its default's type (TOML gives integers, floats, booleans, strings and arrays); an
# integer where the default is a float becomes that float, so `window=30` and `window=30.0` run (and hash) alike.
# A None is left to the method's own check at run time (several take None for "all rows").

_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               list: "an array", tuple: "an array"}


def check_params(method: str, cls: type, params: Mapping[str, object]) -> dict[str, object]:
    """``params`` checked against the parameters ``cls`` declares (``default_params()``); the values made typed."""
    defaults_of = getattr(cls, "default_params", None)
    if not callable(defaults_of):  # a class with only the Method protocol: its constructor's signature decides
        try:
            inspect.signature(cls).bind(**params)
        except TypeError as e:
            raise UnknownNameError(f"method {method!r}: parameters {', '.join(params)} refused ({e})") from None
        return dict(params)
    defaults = defaults_of()
    unknown = sorted(k for k in params if k not in defaults)
    if unknown:
        raise UnknownNameError(f"method {method!r}: unknown parameter {unknown[0]!r}; known: "
                               f"{', '.join(sorted(defaults)) or 'none'}")
    return {k: _typed(method, k, v, defaults[k]) for k, v in params.items()}


def _typed(method: str, key: str, value: object, default: object) -> object:
    if value is None or default is None:
        return value
    kind = type(default)
    if default == "auto":  # resolved per case by default (llmrca.methods.window): "auto" or a whole number
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise MethodError(f"method {method!r}: parameter {key} must be an integer or \"auto\" (default \"auto\"), "
                          f"got {_shown(value)}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (list, tuple) and isinstance(value, (list, tuple)):
        return kind(value)
    if kind in _TYPE_WORDS and type(value) is not kind:
        raise MethodError(f"method {method!r}: parameter {key} must be {_TYPE_WORDS[kind]} (default "
                          f"{_shown(default)}), got {_shown(value)}")
    return value


def checked_params(method_params: Mapping[str, Mapping[str, object]] | None, names: Iterable[str]
                   ) -> dict[str, dict[str, object]]:
    """Method → parameters, each method named as the run names it (a ``module:Class`` key becomes its class's
    name) and each value checked (``check_params``); every method must be one of ``names``."""
    from llmrca.methods.registry import entry, method_class

    names = list(names)
    by_name: dict[str, dict[str, object]] = {}
    for ref, ps in (method_params or {}).items():
        if not isinstance(ps, Mapping):
            raise LlmrcaError(f"parameters of method {ref!r} must map parameter names to values, are {ps!r}")
        by_name.setdefault(entry(str(ref)).name, {}).update(ps)
    unknown = sorted(set(by_name) - set(names))
    if unknown:
        raise UnknownNameError(f"parameters (method_params) given for method(s) not in the run: "
                               f"{', '.join(unknown)}; the run's: {', '.join(names)}")
    return {n: check_params(n, method_class(n), ps) for n, ps in by_name.items() if ps}


def parse_param_items(items: Iterable[str]) -> dict[str, dict[str, object]]:
    """``["baro.window=30", "mymod:MeanShift.k=2"]`` → ``{"baro": {"window": 30}, "mymod:MeanShift": {"k": 2}}``.

    The method part is a name or a ``module:Class`` (the key is after its last '.'); the value is a TOML value,
    and a bare word that is not TOML (``quantile``) is that string."""
    from llmrca.scenarios.scenario import parse_value

    out: dict[str, dict[str, object]] = {}
    for item in items:
        lhs, sep, rhs = str(item).partition("=")
        method, dot, key = lhs.strip().rpartition(".")
        if not sep or not dot or not method.strip() or not key.strip().isidentifier():
            raise LlmrcaError(f"--param {item!r}: expected METHOD.KEY=VALUE (e.g. baro.window=30)")
        out.setdefault(method.strip(), {})[key.strip()] = parse_value(rhs.strip())
    return out


def read_params_file(path: str | Path) -> dict[str, dict[str, object]]:
    """A TOML file of one table per method (``[baro]`` then ``window = 30``) → method → parameters."""
    import tomllib

    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise FormatError(f"{p}: cannot read the parameters file ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{p}: not valid TOML ({e})") from None
    for name, table in doc.items():
        if not isinstance(table, dict):
            raise FormatError(f"{p}: {name} = {table!r} is not a table; write [METHOD] and then KEY = VALUE "
                              "lines (e.g. [baro] window = 30)")
        nested = [k for k, v in table.items() if isinstance(v, dict)]
        if nested:
            raise FormatError(f"{p}: [{name}] {nested[0]} is a table; a parameter is a value (quote a "
                              'module:Class table name with dots: ["pkg.mod:Cls"])')
    return {str(k): dict(v) for k, v in doc.items()}


def merge_params(*layers: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, object]]:
    """Method → parameters, later layers winning key by key (``--params`` files first, then each ``--param``)."""
    out: dict[str, dict[str, object]] = {}
    for layer in layers:
        for method, ps in layer.items():
            out.setdefault(method, {}).update(ps)
    return out


def from_options(items: Iterable[str] | None, files: Iterable[str | Path] | None) -> dict[str, dict[str, object]]:
    """What ``--params FILE`` (each, in order) and then ``--param METHOD.KEY=VALUE`` (each) give."""
    return merge_params(*(read_params_file(f) for f in files or ()), parse_param_items(items or ()))


def describe(params: Mapping[str, Mapping[str, object]]) -> str:
    """``baro: window=30, two_sided=false; nsigma: window=20`` (what a report says a run used)."""
    return "; ".join(f"{m}: " + ", ".join(f"{k}={_shown(v)}" for k, v in ps.items())
                     for m, ps in params.items() if ps)


def _shown(v: object) -> str:
    """A value as TOML writes it (as the user typed it), else its repr (None, an object from Python)."""
    from llmrca.scenarios import toml_text

    try:
        return toml_text.value(v)
    except TypeError:
        return repr(v)
# --- end of parameters given from outside
