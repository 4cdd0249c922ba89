"""FCI's Possible-D-SEP sets (Spirtes, Glymour & Scheines 2000) on the matrix of endpoint marks.

``PossibleDsep`` returns what causal-learn's ``FCI.getPossibleDsep`` returns — the same breadth-first search over
edges (a, b) that continues to c when b is a definite collider on a *-> b <-* c or a and c are adjacent, the same
"b has a possible parent with a semi-directed path to x or to b" condition, the same queue order (neighbours in
index order; x's own neighbours in the library's order only with ``library_order``: the library's depends on the
process's string-hash seed, see ``__call__``) and the same path-length cut — but reads the marks
matrix instead of building an edge object per look, and answers "is there a semi-directed path from r to t" from a
reachability set per r, computed once per graph state (the library runs a breadth-first search for each question:
at 1,000 columns 37k searches, two thirds of FCI's time). ``tests/test_pc_skeleton.py`` compares it with the
library's on random PAGs.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

_TAIL, _ARROW, _CIRCLE = -1, 1, 2


class PossibleDsep:
    """Possible-D-SEP queries on one state of a causal-learn graph; call ``refresh`` after the graph changed."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.refresh()

    def refresh(self) -> None:
        g = self.graph.graph
        adj = (g != 0) & (g.T != 0)
        self.g = g.copy()
        self.adj = [np.flatnonzero(row).tolist() for row in adj]
        semi = adj & ((g == _TAIL) | (g == _CIRCLE))  # r -> u when the mark at r's end is a tail or a circle
        self.semi = [np.flatnonzero(row).tolist() for row in semi]
        self.reach: dict[int, set[int]] = {}

    def _reaches(self, r: int, t: int) -> bool:
        seen = self.reach.get(r)
        if seen is None:
            seen = set()
            todo = deque(self.semi[r])
            seen.update(todo)
            while todo:
                for u in self.semi[todo.popleft()]:
                    if u not in seen:
                        seen.add(u)
                        todo.append(u)
            self.reach[r] = seen
        return t in seen

    def __call__(self, x: int, y: int, max_path_length: int = -1, library_order: bool = False) -> list[Any]:
        g, adj = self.g, self.adj
        nodes = self.graph.nodes
        index = self.graph.node_map
        dsep: set[int] = set()
        previous: dict[int, set[int]] = {}
        queue: deque[tuple[int, int]] = deque()
        visited: set[tuple[int, int]] = set()
        marker = None
        distance = 0
        limit = 1000 if max_path_length == -1 else max_path_length
        # The library starts from a set of x's neighbours (Node objects, hashed by name): its order, and so which
        # nodes the search has seen when it asks about b, changes with the process's string-hash seed. By default
        # the neighbours are taken in index order (deterministic); ``library_order`` takes the library's.
        start = [index[v] for v in {nodes[b] for b in adj[x]}] if library_order else adj[x]
        for b in start:
            if b == y:
                continue
            edge = (x, b)
            if marker is None:
                marker = edge
            queue.append(edge)
            visited.add(edge)
            previous.setdefault(x, set()).add(b)
            dsep.add(b)
        while queue:
            t = queue.popleft()
            if marker == t:
                marker = None
                distance += 1
                if distance > 0 and distance > limit:
                    break
            a, b = t
            if b == x or any(r != b and r != x and (self._reaches(r, x) or self._reaches(r, b))
                             for r in previous.get(b, ())):
                dsep.add(b)
            for c in adj[b]:
                if c == a or c == x or c == y:
                    continue
                previous.setdefault(c, set()).add(b)
                collider = g[b, a] == _ARROW and g[b, c] == _ARROW
                if collider or g[c, a] != 0:
                    u = (a, c)
                    if u in visited:
                        continue
                    visited.add(u)
                    queue.append(u)
                    if marker is None:
                        marker = u
        dsep.discard(x)
        dsep.discard(y)
        return sorted((nodes[i] for i in dsep), reverse=True)
