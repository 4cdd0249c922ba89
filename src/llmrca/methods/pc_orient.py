"""PC's orientation phase (unshielded colliders by ``uc_sepset``, then Meek's rules) within the builder's time
budget, on causal-learn's own graph classes.

causal-learn's ``UCSepset.uc_sepset`` and ``Meek.meek`` take no deadline, and their cost grows fast with the
column count: every removal of a directed edge rebuilds the graph's ancestor matrix from a list of Python objects
of every edge (``get_graph_edges``, an O(n^2) scan), and the triples, triangles and kites are listed by pairing
every adjacency (every triangle, for kites) with every other. At 800 columns a PC whose skeleton kept to a 60 s
budget ran on for minutes in them. Here the same two functions run on subclasses of causal-learn's
``CausalGraph`` and ``GeneralGraph`` that

- rebuild the ancestor matrix from the matrix of endpoint marks, with the library's update rule written as
  whole-row and whole-column writes (the same matrix, element for element);
- list the triples, triangles and kites grouped by their shared node instead of over all pairs: the same lists,
  in the same order, at a cost that grows with the degrees rather than with the square of the edge count;
- check the deadline at every edge change and every edge test of the orientation loops (and while listing),
  raising ``BudgetExceeded``; so a budget is overrun by at most one edge change;
- rebuild the ancestor matrix lazily (on its first read after a directed edge went: PC's collider step removes
  hundreds and never reads it), share the read-only separating sets between the copies ``uc_sepset`` and ``meek``
  make (one list per removed pair: a million at 1,000 columns), and build the graph without
  ``CausalGraph.__init__``'s complete graph of edge objects;
- answer the row scans FCI's rules make (adjacent nodes, a node's edges, parents, children, nodes into / out of)
  with one numpy scan each, and look at the clock there too, so ``causal_graphs._fci`` runs causal-learn's FCI
  rules on these graphs within the budget.

Every decision is causal-learn's own: ``tests/test_pc_orient.py`` compares the endpoint matrices, the ancestor
matrices and the lists with the library's on random graphs. Side by side on random skeletons of mean degree 3
(``python benchmarks/pc_orient_speed.py``, 2-core machine, otherwise idle, 2026-12-07): 3.9 s against 0.31 s at
100 nodes, 33 s against 1.7 s at 200 (13x, 20x), the same CPDAG each time.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np

# How many candidate pairs are listed between two looks at the clock.
_CHECK_EVERY = 4096
_MARKS = (-1, 0, 1, 2)  # tail, none, arrow, circle: the only endpoint marks PC's and FCI's steps make


@functools.cache
def _classes() -> tuple[type, type]:
    """The budgeted subclasses (built on first use: causal-learn is imported only when PC runs)."""
    from causallearn.graph.GeneralGraph import GeneralGraph
    from causallearn.graph.GraphClass import CausalGraph

    from llmrca.methods.causal_graphs import BudgetExceeded

    def check(deadline: float | None) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise BudgetExceeded

    class BudgetedGeneralGraph(GeneralGraph):
        deadline: float | None = None
        _exotic: bool = False  # some mark outside tail / none / arrow / circle (a multi-edge's): the library's path
        _pending: tuple[np.ndarray, list[tuple[int, int]]] | None = None

        # The ancestor matrix is rebuilt lazily: a removed directed edge records the marks it leaves, later
        # adjust_dpath calls are logged, and the first read replays both (the same matrix as rebuilding at once;
        # PC's collider step removes hundreds of directed edges and never reads it, Meek's rules read it).
        @property
        def dpath(self) -> np.ndarray:
            if self._pending is not None:
                marks, log = self._pending
                self._pending = None
                self._reconstitute(marks)
                for i, j in log:
                    self.adjust_dpath(i, j)
            return self._dpath

        @dpath.setter
        def dpath(self, value: np.ndarray) -> None:
            self._pending = None
            self._dpath = value

        def add_edge(self, edge: Any) -> Any:
            check(self.deadline)
            out = super().add_edge(edge)
            i, j = self.node_map[edge.get_node1()], self.node_map[edge.get_node2()]
            if self.graph[i, j] not in _MARKS or self.graph[j, i] not in _MARKS:
                self._exotic = True
            return out

        # GeneralGraph's queries that scan a whole row in Python, as one numpy scan (the same nodes in the same
        # order) when every mark is plain; each looks at the clock, so FCI's rules keep to the budget too.
        def _nodes_at(self, mask: np.ndarray) -> list[Any]:
            nodes = self.nodes
            return [nodes[k] for k in np.flatnonzero(mask).tolist()]

        def get_adjacent_nodes(self, node: Any) -> list[Any]:
            check(self.deadline)
            j = self.node_map[node]
            return self._nodes_at((self.graph[j] != 0) & (self.graph[:, j] != 0))

        def get_node_edges(self, node: Any) -> list[Any]:
            check(self.deadline)
            if self._exotic:
                return super().get_node_edges(node)
            i = self.node_map[node]
            return [self.get_edge(node, n2) for n2 in self._nodes_at(np.isin(self.graph[:, i], (1, -1, 2)))]

        def get_graph_edges(self) -> list[Any]:
            check(self.deadline)
            if self._exotic:
                return super().get_graph_edges()
            nodes = self.nodes
            ii, jj = np.nonzero(np.triu(np.isin(self.graph.T, (1, -1, 2)), 1))
            return [self.get_edge(nodes[i], nodes[j]) for i, j in zip(ii.tolist(), jj.tolist())]

        def get_parents(self, node: Any) -> list[Any]:
            if self._exotic:
                return super().get_parents(node)
            j = self.node_map[node]
            return self._nodes_at((self.graph[:, j] == -1) & (self.graph[j] == 1))

        def get_children(self, node: Any) -> list[Any]:
            if self._exotic:
                return super().get_children(node)
            i = self.node_map[node]
            return self._nodes_at((self.graph[:, i] == 1) & (self.graph[i] == -1))

        def get_nodes_into(self, node: Any, endpoint: Any) -> list[Any]:
            check(self.deadline)
            want = {"ARROW": 1, "TAIL": -1, "CIRCLE": 2}.get(str(endpoint))
            if self._exotic or want is None:
                return super().get_nodes_into(node, endpoint)
            return self._nodes_at(self.graph[self.node_map[node]] == want)

        def get_nodes_out_of(self, node: Any, endpoint: Any) -> list[Any]:
            check(self.deadline)
            want = {"ARROW": 1, "TAIL": -1, "CIRCLE": 2}.get(str(endpoint))
            if self._exotic or want is None:
                return super().get_nodes_out_of(node, endpoint)
            return self._nodes_at(self.graph[:, self.node_map[node]] == want)

        def get_edge(self, node1: Any, node2: Any) -> Any:
            check(self.deadline)
            return super().get_edge(node1, node2)

        def is_adjacent_to(self, node1: Any, node2: Any) -> bool:
            check(self.deadline)
            return super().is_adjacent_to(node1, node2)

        def remove_edge(self, edge: Any) -> Any:
            """GeneralGraph.remove_edge for a graph of tails, arrows and circles only (what PC's and FCI's steps
            make; anything else goes to the library): the same marks, and the same ancestor matrix rebuilt from the
            matrix of marks instead of from a list of every edge's object."""
            check(self.deadline)
            if self._exotic:
                return super().remove_edge(edge)
            g = self.graph
            i, j = self.node_map[edge.get_node1()], self.node_map[edge.get_node2()]
            out_of, in_to = g[j, i], g[i, j]
            directed = (out_of == 1 and in_to == -1) or (in_to == 1 and out_of == -1)
            if edge.get_numerical_endpoint1() == in_to and edge.get_numerical_endpoint2() == out_of:
                g[j, i] = g[i, j] = 0
            if directed:
                self._pending = (g.copy(), [])

        def _reconstitute(self, marks: np.ndarray | None = None) -> None:
            """reconstitute_dpath(get_graph_edges()) on ``marks`` (default: the graph's): the identity, then each
            directed edge's adjust_dpath, parent first, in the reverse of the edge list's order (pairs i < j, row by
            row)."""
            g = self.graph if marks is None else marks
            self.dpath = np.eye(self.num_vars, dtype=self._dpath.dtype)
            ii, jj = np.nonzero(np.triu((g.T == 1) & (g == -1) | (g == 1) & (g.T == -1), 1))
            for i, j in zip(ii[::-1].tolist(), jj[::-1].tolist()):
                if g[j, i] == 1:  # i --> j
                    self.adjust_dpath(i, j)
                else:
                    self.adjust_dpath(j, i)

        def adjust_dpath(self, i: int, j: int) -> None:
            """GeneralGraph.adjust_dpath's loop over k, as whole-row and whole-column writes: the loop reads row i
            and column j before it writes them, except dpath[j, j], written (from dpath[i, j]) just before it
            is read; for i == j the loop writes nothing new."""
            if self._pending is not None:
                self._pending[1].append((i, j))
                return
            d = self._dpath
            if i == j:
                d[i, i] = 1
                return
            row_i = d[i, :] == 1
            col_j = d[:, j] == 1
            col_j[j] = col_j[j] or row_i[j]
            d[j, i] = 1
            d[j, row_i] = 1
            d[col_j, i] = 1

    class BudgetedCausalGraph(CausalGraph):
        deadline: float | None = None

        def __deepcopy__(self, memo: dict) -> Any:
            """uc_sepset and meek start with ``deepcopy(cg)`` and then only read the separating sets: the copy
            shares them (and the CI test) instead of copying one list per removed pair (1M at 1,000 columns);
            everything else is copied as deepcopy would."""
            import copy

            new = self.__class__.__new__(self.__class__)
            memo[id(self)] = new
            for key, val in self.__dict__.items():
                new.__dict__[key] = val if key in ("sepset", "test") else copy.deepcopy(val, memo)
            return new

        def is_fully_directed(self, i: int, j: int) -> bool:
            check(self.deadline)
            return super().is_fully_directed(i, j)

        def is_undirected(self, i: int, j: int) -> bool:
            check(self.deadline)
            return super().is_undirected(i, j)

        # The lists of CausalGraph, pair by pair in the order of itertools.permutations over find_adj() (and
        # over find_triangles() for kites), but each element paired only with those sharing its node.
        def find_unshielded_triples(self) -> list[tuple[int, int, int]]:
            g = self.G.graph
            return [(a, b, c) for a, b, c in self._paths() if g[a, c] == 0]

        def find_triangles(self) -> list[tuple[int, int, int]]:
            adj = set(self.find_adj())
            return [(a, b, c) for a, b, c in self._paths() if (a, c) in adj]

        def find_kites(self) -> list[tuple[int, int, int, int]]:
            g = self.G.graph
            tri = self.find_triangles()
            by_ends: dict[tuple[int, int], list[tuple[int, int]]] = {}
            for n, (i, j, l) in enumerate(tri):
                by_ends.setdefault((i, l), []).append((n, j))
            out, seen = [], 0
            for n, (i, j, l) in enumerate(tri):
                for m, k in by_ends[(i, l)]:
                    seen += 1
                    if seen % _CHECK_EVERY == 0:
                        check(self.deadline)
                    if m != n and j < k and g[j, k] == 0:
                        out.append((i, j, k, l))
            return out

        def _paths(self) -> list[tuple[int, int, int]]:
            """(a, b, c) for every ordered pair of adjacencies (a, b), (b, c) with a != c, in permutation order."""
            adj = self.find_adj()
            by_first: dict[int, list[tuple[int, int]]] = {}
            for n, (a, b) in enumerate(adj):
                by_first.setdefault(a, []).append((n, b))
            out, seen = [], 0
            for n, (a, b) in enumerate(adj):
                for m, c in by_first.get(b, ()):
                    seen += 1
                    if seen % _CHECK_EVERY == 0:
                        check(self.deadline)
                    if m != n and a != c:
                        out.append((a, b, c))
            return out

    return BudgetedGeneralGraph, BudgetedCausalGraph


def budgeted_graph(names: list[str], skeleton: Any, deadline: float | None) -> Any:
    """A CausalGraph over ``names`` holding ``skeleton`` (a GeneralGraph from ``fas``), whose orientation steps keep
    to ``deadline`` (``time.monotonic()`` seconds; None: none)."""
    cg = budgeted_from_marks(names, skeleton.graph, deadline, nodes=skeleton.get_nodes())
    cg.G.dpath = skeleton.dpath.copy()
    return cg


def budgeted_from_marks(names: list[str], marks: np.ndarray, deadline: float | None, nodes: Any = None) -> Any:
    """A budgeted CausalGraph over ``names`` whose graph holds the endpoint matrix ``marks`` (copied), with the
    ancestor matrix of its directed edges, and empty separating sets. Built without ``CausalGraph.__init__``,
    which first adds every edge of the complete graph one object at a time (500k at 1,000 columns)."""
    from causallearn.graph.GraphClass import CausalGraph
    from causallearn.graph.GraphNode import GraphNode

    general, causal = _classes()
    g = general(list(nodes) if nodes is not None else [GraphNode(n) for n in names])
    g.graph = np.array(marks, dtype=g.graph.dtype, copy=True)
    g.deadline = deadline
    g._exotic = not np.isin(g.graph, _MARKS).all()
    g._reconstitute()
    cg = causal.__new__(causal)
    cg.__dict__.update(vars(CausalGraph(0, [])))  # the library's attributes, empty
    cg.G = g
    cg.sepset = np.empty((len(names), len(names)), object)
    cg.deadline = deadline
    return cg


def orient(cg: Any, priority: int = 2) -> Any:
    """Unshielded colliders (causal-learn's ``uc_sepset`` at ``priority``), then Meek's rules: the CPDAG."""
    from causallearn.utils.PCUtils import Meek, UCSepset

    return Meek.meek(UCSepset.uc_sepset(cg, priority))
