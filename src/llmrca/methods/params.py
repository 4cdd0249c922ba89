"""Checks of method parameters, done when a method runs (constructors only store them, as in scikit-learn)."""

from __future__ import annotations

from llmrca.errors import MethodError


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
