"""Writing the small TOML subset a scenario uses: top-level keys, tables, dotted sub-tables, and values that are
strings, booleans, integers, floats and arrays of those. (``tomllib`` reads TOML but does not write it, and the
subset is too small to justify another dependency.)"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def value(v: Any) -> str:
    """One TOML value. JSON's string escapes are valid TOML basic-string escapes."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        text = repr(v)
        return text if any(c in text for c in ".eE") else text + ".0"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as a TOML value")


def dumps(doc: Mapping[str, Any], comments: Mapping[str, str] | None = None) -> str:
    """TOML text of ``doc``: its plain values first, then one ``[table]`` per mapping (nested mappings as
    ``[table.sub]``), in the mapping's order. ``comments``: ``"table.key"`` → a comment written after that line.
    ``None`` values are left out (TOML has no null: absent means "not set")."""
    lines: list[str] = []
    _write(lines, doc, (), comments or {})
    return "\n".join(lines).strip("\n") + "\n"


def _write(lines: list[str], table: Mapping[str, Any], path: tuple[str, ...], comments: Mapping[str, str]) -> None:
    plain = [(k, v) for k, v in table.items() if v is not None and not isinstance(v, Mapping)]
    subs = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
    if path and (plain or not subs):
        lines.append("")
        lines.append("[" + ".".join(key(p) for p in path) + "]")
    for k, v in plain:
        line = f"{key(k)} = {value(v)}"
        note = comments.get(".".join((*path, k)))
        lines.append(f"{line}  # {note}" if note else line)
    for k, v in subs:
        _write(lines, v, (*path, k), comments)
