"""Pandas string columns built straight from Python strings (the simulator's trace and log text columns).

``pd.array(values, dtype="string")`` checks every element in Python before it hands the values to pyarrow; the
simulator's values are already ``str`` (or ``None`` for a missing value), so where pandas' default string dtype is
the pyarrow one this builds the same array (same dtype, values and missing values) from one ``pyarrow.array``
call. Anything else takes pandas' own path.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

try:
    import pyarrow as pa
except ImportError:  # pragma: no cover - pyarrow is a dependency
    pa = None

_DTYPE = pd.StringDtype()
_FAST = pa is not None and getattr(_DTYPE, "storage", "") == "pyarrow" and hasattr(pd.arrays, "ArrowStringArray")


def string_array(values: Any) -> Any:
    """``pd.array(values, dtype="string")`` for a sequence (list or object array) of ``str`` and ``None``."""
    if _FAST:
        try:
            data = values.tolist() if isinstance(values, np.ndarray) else values
            out = pd.arrays.ArrowStringArray(pa.chunked_array([pa.array(data, type=pa.large_string())]))
        except (pa.ArrowException, TypeError, ValueError):
            pass
        else:
            if out.dtype == _DTYPE:
                return out
    return pd.array(values, dtype="string")


def string_take(texts: Any, codes: np.ndarray, null: np.ndarray | None = None) -> Any:
    """``string_array`` of ``texts[codes]`` (``texts`` a list or object array of ``str``/``None``; where ``null``
    is given, the rows it marks are missing): the texts are converted once each, in their own order, and Arrow
    takes them by code. Same array as ``string_array(np.asarray(texts, dtype=object)[codes])``, but a text that
    repeats (a service name, a template) is converted once, and the conversion walks the strings in the order
    they were made, which is what costs: converting the same strings in a permuted order is ~3x slower (cache
    misses on the string objects), and Arrow's take is a C loop over offsets."""
    codes = np.asarray(codes, dtype=np.int64)
    if isinstance(texts, Pieces):
        texts = texts.arrow() if _FAST else texts.texts()
    if _FAST:
        try:
            if isinstance(texts, pa.LargeStringArray):
                arr = texts
            else:
                arr = pa.array(texts.tolist() if isinstance(texts, np.ndarray) else texts, type=pa.large_string())
            idx = pa.array(codes, mask=None if null is None else np.asarray(null, dtype=bool))
            out = pd.arrays.ArrowStringArray(pa.chunked_array([arr.take(idx)]))
        except (pa.ArrowException, TypeError, ValueError):
            pass
        else:
            if out.dtype == _DTYPE:
                return out
    picked = np.asarray(texts, dtype=object)[codes] if len(codes) else np.empty(0, dtype=object)
    if null is not None:
        picked[np.asarray(null, dtype=bool)] = None
    return string_array(picked)


class Pieces:
    """The ``width``-character pieces of one ASCII text (ids drawn as one hex text), without a Python string per
    piece until one is asked for: ``arrow()`` is the Arrow array of all pieces, made from the text's bytes with
    fixed offsets (what ``string_take`` takes from), ``texts(start, step)`` the Python strings of every
    ``step``-th piece from ``start``."""

    def __init__(self, text: str, width: int):
        if not text.isascii() or len(text) % width:
            raise ValueError("Pieces: an ASCII text whose length is a multiple of the width")
        self.text, self.width, self.n = text, width, len(text) // width

    def __len__(self) -> int:
        return self.n

    def texts(self, start: int = 0, step: int = 1) -> list[str]:
        w, text = self.width, self.text
        return [text[i: i + w] for i in range(start * w, len(text), step * w)]

    def arrow(self) -> Any:
        offsets = np.arange(0, (self.n + 1) * self.width, self.width, dtype=np.int64)
        return pa.LargeStringArray.from_buffers(self.n, pa.py_buffer(offsets), pa.py_buffer(self.text.encode("ascii")))


# What pandas makes of an object array of ``str`` in a frame (pandas 3: its pyarrow-backed "str" dtype).
_INFERRED = pd.DataFrame({"x": np.array(["x"], dtype=object)})["x"].dtype
_FAST_INFERRED = _FAST and isinstance(_INFERRED, pd.StringDtype) and _INFERRED.storage == "pyarrow"


def inferred_take(texts: Any, codes: np.ndarray) -> Any:
    """A frame column of ``texts[codes]`` (``texts`` a list of ``str``, or ``Pieces``) as ``pd.DataFrame`` would
    make it from the object array ``np.asarray(texts, dtype=object)[codes]``: where pandas infers its
    pyarrow-backed string dtype, that array built by Arrow's take (each text converted once, no inference pass
    over the rows); else that object array."""
    codes = np.asarray(codes, dtype=np.int64)
    pieces = isinstance(texts, Pieces)
    if len(codes) and _FAST_INFERRED and (pieces or all(type(x) is str for x in texts)):
        arr = (texts.arrow() if pieces else pa.array(texts, type=pa.large_string())).take(pa.array(codes))
        out = pd.arrays.ArrowStringArray(pa.chunked_array([arr]), dtype=_INFERRED)
        if out.dtype == _INFERRED:
            return out
    texts = texts.texts() if pieces else texts
    return np.asarray(texts, dtype=object)[codes] if len(codes) else np.empty(0, dtype=object)


def const(text: str) -> tuple[str, str]:
    """A ``bake`` field whose text is fixed."""
    return ("const", text)


def value(spec: str = "", before: str = "", after: str = "") -> tuple[str, str]:
    """A ``bake`` field filled per line: printed with ``spec`` (``f"{v:spec}"``), between fixed texts."""
    esc = _escape
    return ("pattern", esc(before) + "{" + (":" + spec if spec else "") + "}" + esc(after))


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def bake(fmt: str, fields: list[tuple[str, str]]) -> Any:
    """The bound ``format`` of ``fmt`` (positional ``{}`` fields only) with its constant fields written in: one
    entry of ``fields`` per field, ``const(text)`` or ``value(spec)``; the result takes the values in order. Its
    text is ``fmt.format(*texts)`` where each value's text is ``f"{v:spec}"``."""
    out = []
    k = 0
    for literal, field, spec, conv in string.Formatter().parse(fmt):
        out.append(_escape(literal))
        if field is None:
            continue
        if field != "" or spec or conv or k >= len(fields):
            raise ValueError(f"bake: {fmt!r} needs {k + 1}+ plain positional fields, {len(fields)} given")
        what, text = fields[k]
        out.append(_escape(text) if what == "const" else text)
        k += 1
    if k != len(fields):
        raise ValueError(f"bake: {fmt!r} has {k} fields, {len(fields)} given")
    return compiled("".join(out))


_SPEC = re.compile(r"[\w.,<>=^+\- #%]*")


def compiled(fmt: str) -> Callable[..., str]:
    """``fmt.format`` for positional fields (``{}`` or ``{0}``, ``{1}``, ...), as a function compiled once from an
    f-string of the same literals and fields: the same text (each value printed by ``format(v, spec)``, as
    ``str.format`` does), without parsing the pattern on every call. A pattern with named fields, or a spec this
    does not know, is left to ``fmt.format``."""
    parts: list[str] = []
    top, auto = -1, 0
    for literal, field, spec, conv in string.Formatter().parse(fmt):
        if literal:
            parts.append(repr(literal))
        if field is None:
            continue
        if field == "":
            idx, auto = auto, auto + 1
        elif field.isdigit():
            idx = int(field)
        else:
            return fmt.format
        if (spec and not _SPEC.fullmatch(spec)) or conv not in (None, "r", "s", "a"):
            return fmt.format
        top = max(top, idx)
        parts.append("f'{a" + str(idx) + ("!" + conv if conv else "") + (":" + spec if spec else "") + "}'")
    args = "".join(f"a{i}, " for i in range(top + 1))
    return eval(f"lambda {args}*_: {' '.join(parts) or repr('')}")  # our own pattern, checked above
