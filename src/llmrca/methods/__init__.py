"""RCA methods behind one interface (``Method``) and one registry."""

from llmrca.methods.base import BaseMethod, Method, Ranking
from llmrca.methods.registry import (
    entries,
    entry,
    get_method,
    installed,
    method_class,
    names,
    register,
    resolve,
)

__all__ = ["BaseMethod", "Method", "Ranking", "entries", "entry", "get_method", "installed", "method_class", "names",
           "register", "resolve"]
