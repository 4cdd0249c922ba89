"""One registry of RCA methods, keyed by the names docs/methods.md uses. Modules load lazily, so listing is cheap
and an optional dependency (torch) is needed only by the method that uses it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from llmrca.errors import UnknownNameError
from llmrca.methods.base import BaseMethod, Family


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "module:Class"
    family: Family
    needs: frozenset[str]
    summary: str
    origin: str = "built-in"  # or "plug-in module:Class", "entry point of <package>" (llmrca.methods.plugins)


_ENTRIES: dict[str, Entry] = {}


def register(name: str, target: str, family: Family, needs: set[str] | frozenset[str], summary: str) -> None:
    _ENTRIES[name] = Entry(name, target, family, frozenset(needs), summary)


# One line per method. Adding a method = adding its module and one line here.
M, T, L = "metrics", "traces", "logs"
register("dummy", "llmrca.methods.dummy:Dummy", "metric", {M}, "seeded random permutation (chance baseline)")
register("nsigma", "llmrca.methods.nsigma:NSigma", "metric", {M}, "max z-score after injection vs before")
register("baro", "llmrca.methods.baro:Baro", "metric", {M}, "robust (median/IQR) scores; BOCPD onset if no inject_time")
register("e-diagnosis", "llmrca.methods.ediagnosis:EDiagnosis", "metric", {M},
         "two-sample test per column between normal and abnormal windows")
register("pc-pagerank", "llmrca.methods.graph_rank:PCPageRank", "metric", {M}, "PC causal graph + PageRank on the reversed graph")
register("pc-randomwalk", "llmrca.methods.graph_rank:PCRandomWalk", "metric", {M}, "PC causal graph + random walk from the SLI")
register("fci-pagerank", "llmrca.methods.graph_rank:FCIPageRank", "metric", {M}, "FCI causal graph + PageRank on the reversed graph")
register("fci-randomwalk", "llmrca.methods.graph_rank:FCIRandomWalk", "metric", {M}, "FCI causal graph + random walk from the SLI")
register("granger-pagerank", "llmrca.methods.graph_rank:GrangerPageRank", "metric", {M}, "pairwise Granger graph + reversed PageRank")
register("granger-randomwalk", "llmrca.methods.graph_rank:GrangerRandomWalk", "metric", {M}, "pairwise Granger graph + SLI random walk")
register("lingam-pagerank", "llmrca.methods.graph_rank:LiNGAMPageRank", "metric", {M}, "DirectLiNGAM graph + reversed PageRank")
register("lingam-randomwalk", "llmrca.methods.graph_rank:LiNGAMRandomWalk", "metric", {M}, "DirectLiNGAM graph + SLI random walk")
register("causalai", "llmrca.methods.causalai:CausalAI", "metric", {M}, "PC with a regime node; root causes = its neighbours")
register("microcause", "llmrca.methods.microcause:MicroCause", "metric", {M}, "PCMCI graph + TCORW random walk")
register("rcd", "llmrca.methods.rcd:RCD", "metric", {M}, "F-node + localized Ψ-PC over random chunks")
register("circa", "llmrca.methods.circa:CIRCA", "metric", {M},
         "structural graph + regression residual z-scores + descendant adjustment")
register("causalrca", "llmrca.methods.causalrca:CausalRCA", "metric", {M}, "DAG-GNN graph + PageRank (torch extra)")
register("microrca", "llmrca.methods.microrca:MicroRCA", "metric", {M},
         "BIRCH anomalous subgraph of services and hosts + personalized PageRank")
register("microscope", "llmrca.methods.microscope:MicroScope", "metric", {M},
         "DFS over anomalous callees from the frontend, ranked by SLI correlation")
register("monitorrank", "llmrca.methods.monitorrank:MonitorRank", "metric", {M},
         "random walk on the call graph weighted by similarity to the SLI")
register("tracerca", "llmrca.methods.tracerca:TraceRCA", "trace", {T},
         "abnormal invocations → suspicious service sets (Jaccard) × in-set score")
register("microrank", "llmrca.methods.microrank:MicroRank", "trace", {T},
         "SLO-split traces, PageRank on operation–trace graphs, spectrum (DStar2) scores")
register("mm-baro", "llmrca.methods.mmbaro:MMBaro", "multi-source", {M, L, T},
         "BARO's robust scores over metrics, log-template counts and per-operation trace series")
register("pdiagnose", "llmrca.methods.pdiagnose:PDiagnose", "multi-source", {M, L, T},
         "KDE metric, log-count and trace-latency detectors; weighted vote per service")
# -- llm-aware: written from the serving system's semantics (issue 15) --
register("servediag", "llmrca.methods.servediag:ServeDiag", "llm-aware", {M},
         "LLM-serving signatures (GPU, engine, proxy, workload, network) vs replica peers; names the fault kind")


# Methods whose causal-discovery step runs over every metric column, so that their cost grows much faster than
# the column count: measured on one `paper` case (2-core VM, idle), study view (33 columns) → full view
# (272 columns, 198 usable): pc-*/fci-* 0.1–0.2 s → 6–7 s, causalai 0.06 → 6.3 s, microcause 0.26 → 14 s,
# causalrca 3.9 → 13 s. `resolve("light")` leaves them out (`llmrca bench` does so for wide views by default).
COLUMN_HEAVY = ("pc-pagerank", "pc-randomwalk", "fci-pagerank", "fci-randomwalk", "causalai", "microcause",
                "causalrca")


def names() -> list[str]:
    return list(_ENTRIES)


def entries() -> list[Entry]:
    return list(_ENTRIES.values())


def entry(name: str) -> Entry:
    """A method by name: built-in (or ``register``ed), a ``module:Class`` spec, a spec's class already resolved
    here by its name, or an installed package's entry point (``llmrca.methods.plugins``)."""
    # --- plug-in methods (llmrca.methods.plugins): everything a built-in name is not
    found = _ENTRIES.get(name)
    if found is not None:
        return found
    from llmrca.methods import plugins

    if plugins.is_spec(name):
        return plugins.resolve_spec(name, _ENTRIES)
    found = plugins.resolved(name) or plugins.entry_point(name, _ENTRIES)
    if found is None:
        raise UnknownNameError(f"unknown method {name!r}; known: {', '.join(_ENTRIES)}; or a plug-in's "
                               "module:Class (e.g. mymod:MeanShift)")
    return found


def installed() -> tuple[list[Entry], list[str]]:
    """The methods of installed packages (entry-point group ``llmrca.methods``) and one line per broken one."""
    from llmrca.methods import plugins

    return plugins.installed(_ENTRIES)
    # --- end of plug-in methods


def method_class(name: str) -> type[BaseMethod]:
    e = entry(name)
    module, _, cls = e.target.partition(":")
    return getattr(importlib.import_module(module), cls)


def get_method(name: str, **params: object) -> BaseMethod:
    return method_class(name)(**params)


def resolve(spec: str | list[str]) -> list[str]:
    """'all', 'a,b' or a list → method names, each checked; 'metric'/'trace'/'multi-source'/'llm-aware' select a
    family;
    'light' = every method but the COLUMN_HEAVY ones."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        if item == "all":
            picked = names()
        elif item == "light":
            picked = [n for n in names() if n not in COLUMN_HEAVY]
        elif item in ("metric", "trace", "multi-source", "llm-aware"):
            picked = [e.name for e in entries() if e.family == item]
        else:
            picked = [entry(item).name]
        out.extend(p for p in picked if p not in out)
    if not out:
        raise UnknownNameError("no method named (use 'all' or a comma-separated list)")
    return out
