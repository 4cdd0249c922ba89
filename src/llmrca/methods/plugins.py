"""Methods from outside llmrca: a ``module:Class`` spec, or an installed package's entry point.

- A spec (``mymod:MeanShift``, ``mypkg.rca:MeanShift``) names a class in any importable module. The current folder
  is put on ``sys.path`` first, as ``python -m`` does, so a file ``mymod.py`` next to the user works. The class is
  known afterwards under its ``name`` attribute (rows, reports and ``--param`` use that name).
- An entry point of the group ``llmrca.methods`` (``[project.entry-points."llmrca.methods"]`` in a package's
  ``pyproject.toml``: ``mean-shift = "mypkg.rca:MeanShift"``) makes an installed package's method known by the
  entry point's name, listed by ``llmrca methods``.

Either way the class is imported and checked here, in the process that plans the run: a wrong spec is one line
before any work starts, not an error row per case. Worker processes import the same ``module:Class`` again; they
inherit this process's ``sys.path`` (``llmrca.evaluate.pool``), the current folder included.

``all`` and the family names ('metric', …) stay the built-in methods, so what a stored bench compares does not
depend on what else happens to be installed; plug-ins are named explicitly (``-m all,mean-shift``).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, get_args

from llmrca.errors import MethodError, UnknownNameError
from llmrca.methods.base import SOURCES, Family

if TYPE_CHECKING:
    from llmrca.methods.registry import Entry

GROUP = "llmrca.methods"
# A method name must survive being a comma-list item and the METHOD part of --param METHOD.KEY=VALUE.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*")
_SPEC = re.compile(r"(?P<module>[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*):(?P<attr>[A-Za-z_][A-Za-z0-9_]*)")

_by_name: dict[str, Entry] = {}  # name → Entry of the specs resolved in this process


def is_spec(text: str) -> bool:
    return ":" in text


def cwd_on_path() -> None:
    """Make modules in the current folder importable, as ``python -m`` does (the ``llmrca`` script does not)."""
    here = os.getcwd()
    if not any(os.path.abspath(p or os.curdir) == here for p in sys.path):
        sys.path.insert(0, here)
        importlib.invalidate_caches()


def load_spec(spec: str, *, name: str | None = None, origin: str | None = None) -> Entry:
    """The registry ``Entry`` of the class ``module:Class``; one-line errors for every way it can be wrong.

    ``name``: the name to know it by (an entry point's); default the class's ``name`` attribute."""
    from llmrca.methods.registry import Entry

    spec = spec.strip()
    m = _SPEC.fullmatch(spec)
    if m is None:
        raise UnknownNameError(f"method {spec!r}: expected module:Class (e.g. mymod:MeanShift), or a method name")
    module_name, attr = m["module"], m["attr"]
    cwd_on_path()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise UnknownNameError(f"method {spec!r}: no module named {missing!r} (looked in {os.getcwd()} and "
                                   "on sys.path)") from None
        raise MethodError(f"method {spec!r}: importing {module_name} raised ModuleNotFoundError: {e}") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 - whatever the user's module raises, said in one line
        raise MethodError(f"method {spec!r}: importing {module_name} raised {type(e).__name__}: "
                          f"{' '.join(str(e).split())}") from None
    if not hasattr(module, attr):
        where = getattr(module, "__file__", None) or module_name
        raise UnknownNameError(f"method {spec!r}: module {module_name} ({where}) has no attribute {attr!r}")
    cls = getattr(module, attr)
    check_method_class(cls, spec)
    return Entry(name or cls.name, spec, cls.family, frozenset(cls.needs), summary_of(cls),
                 origin=origin or f"plug-in {spec}")


def check_method_class(cls: object, where: str) -> None:
    """Refuse anything that is not a class implementing the method interface (``llmrca.methods.base.Method``)."""
    if not inspect.isclass(cls):
        raise MethodError(f"method {where!r}: is a {type(cls).__name__}, not a method class")
    bad = f"method {where!r}: {cls.__name__} is not a method class:"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise MethodError(f"{bad} its `name` must be a string of letters, digits, '-', '_' or '+' (got {name!r})")
    family = getattr(cls, "family", None)
    if family not in get_args(Family):
        raise MethodError(f"{bad} its `family` must be one of {', '.join(get_args(Family))} (got {family!r})")
    needs = getattr(cls, "needs", None)
    if not isinstance(needs, (set, frozenset)) or not needs or not set(needs) <= SOURCES:
        raise MethodError(f"{bad} its `needs` must be a non-empty frozenset of {', '.join(sorted(SOURCES))} "
                          f"(got {needs!r})")
    rank = getattr(cls, "rank", None)
    if not callable(rank):
        raise MethodError(f"{bad} it has no rank(self, obs, *, seed=0) method")
    try:
        inspect.signature(rank).bind(None, None, seed=0)
    except TypeError:
        raise MethodError(f"{bad} its rank{inspect.signature(rank)} cannot be called as "
                          "rank(obs, seed=...)") from None
    except ValueError:  # a builtin without a signature: nothing to check
        pass


def code_digest(target: str) -> str:
    """SHA-256 of the source file of the module ``target`` names (its imports are not included); "" when the
    module has no file (built into the interpreter, made at run time)."""
    import hashlib

    module = importlib.import_module(target.partition(":")[0])
    path = getattr(module, "__file__", None)
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""


def summary_of(cls: type) -> str:
    """The first line of the class's docstring (what ``llmrca methods`` shows)."""
    doc = inspect.getdoc(cls) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def resolve_spec(spec: str, builtin: dict[str, Entry]) -> Entry:
    """The Entry of a spec, remembered under its name so later lookups (``--param``, rows) find it by name."""
    e = load_spec(spec)
    clash = builtin.get(e.name) or _by_name.get(e.name)
    if clash is not None and clash.target != e.target:
        raise MethodError(f"method {spec!r}: its name {e.name!r} is taken by {clash.target} ({clash.origin}); "
                          "give the class another `name`")
    _by_name[e.name] = e
    return e


def resolved(name: str) -> Entry | None:
    """The Entry of a spec resolved earlier in this process, by its name."""
    return _by_name.get(name)


def installed(builtin: dict[str, Entry]) -> tuple[list[Entry], list[str]]:
    """The methods of installed packages (entry points of ``GROUP``), each imported and checked, and one line per
    entry point that is broken (it does not import, names no method class, or takes a name already used)."""
    found: list[Entry] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda p: (p.name, p.value)):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "an unknown package"
        label = f"entry point {ep.name!r} of {dist} ({ep.value})"
        if not NAME.fullmatch(ep.name):
            problems.append(f"{label}: not a usable method name (letters, digits, '-', '_', '+'); skipped")
            continue
        if ep.name in builtin:
            problems.append(f"{label}: {ep.name!r} is a built-in method's name; skipped")
            continue
        if ep.name in seen:
            problems.append(f"{label}: {ep.name!r} is already the entry point of {seen[ep.name]}; skipped")
            continue
        try:
            found.append(load_spec(ep.value, name=ep.name, origin=f"entry point of {dist}"))
        except (MethodError, UnknownNameError) as e:
            problems.append(f"{label}: {e}")
            continue
        seen[ep.name] = dist
    return found, problems


def entry_point(name: str, builtin: dict[str, Entry]) -> Entry | None:
    """The installed method called ``name`` (only its module is imported); None when no entry point has that
    name; a broken one raises its one line."""
    eps = {(ep.value, getattr(getattr(ep, "dist", None), "name", None)) for ep in entry_points(group=GROUP)
           if ep.name == name}
    if not eps or name in builtin:
        return None
    if len(eps) > 1:
        raise MethodError(f"entry point {name!r}: defined by several packages ("
                          + ", ".join(sorted(f"{d or '?'}: {v}" for v, d in eps)) + "); uninstall one")
    value, dist = eps.pop()
    try:
        return load_spec(value, name=name, origin=f"entry point of {dist or 'an unknown package'}")
    except (MethodError, UnknownNameError) as e:
        raise type(e)(f"entry point {name!r} of {dist or 'an unknown package'}: {e}") from None
