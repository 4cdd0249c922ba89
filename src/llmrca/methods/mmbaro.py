"""MM-BARO: BARO's robust scoring over metrics, log-template counts and per-operation trace series at once
(the multi-source BARO of RCAEval, Pham et al.).

The logs become lines per (service, template) per metrics interval (``<service>_log-template-<id>``, the
``logts`` of RCAEval; templates given by the source, else mined with Drain3: ``llmrca.case.templates``), the
spans become per-operation mean latency of successful spans and error counts per interval
(``<service>_<operation>_latency``, ``<service>_<operation>_error-count``), all on the metrics' own time grid
(``llmrca.methods.multisource``; computed as arrays by ``llmrca.methods.multisource_fast``). They are appended to the metric columns and the whole table goes through
:class:`llmrca.methods.baro.Baro` unchanged: median/IQR of the window before the onset, score = max deviation
after it, one merged ranking of every series. Candidates keep their ``<service>_…`` names, so the
service-level ranking needs nothing more. With a known ``inject_time`` (no onset detection) BARO reads its
window straight from the merged float array (``llmrca.methods.window.block_window``) instead of a frame built
from it: the same rows of the same block, so the same ranking (``tests/test_rcaeval_speed_equivalence.py``).

Sources: like RCAEval's MM-BARO, it needs metrics, logs and traces by default and raises ``MethodError``
naming what a case lacks. ``require_all=False`` runs with the metrics and whichever of logs and traces a case
has (on a metrics-only case that is exactly BARO).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import pandas as pd

from llmrca.case import TIME, Observation
from llmrca.case.templates import MODES
from llmrca.errors import MethodError
from llmrca.methods.baro import Baro
from llmrca.methods.base import BaseMethod, Ranking
from llmrca.methods.multisource_fast import merged_block, template_series, trace_series
from llmrca.methods.params import check_bool
from llmrca.methods.spans import require_sources
from llmrca.methods.window import block_window

SOURCES = ("metrics", "logs", "traces")


class MMBaro(BaseMethod):
    """Parameters: every parameter of ``baro`` (``window``, ``two_sided``, ``detect_onset``, ``bocpd_*``),
    plus ``require_all`` (default True: metrics, logs and traces) and ``templates`` (``auto``: the logs' own
    templates, Drain3 where missing; ``drain``: always mine; ``given``: the logs' templates only)."""

    name = "mm-baro"
    family = "multi-source"
    needs = frozenset(SOURCES)

    @classmethod
    def default_params(cls) -> dict[str, object]:
        return {**Baro.default_params(), "require_all": True, "templates": "auto"}

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        require_all = check_bool(self.name, "require_all", self.params["require_all"])
        mode = self.params["templates"]
        if mode not in MODES:
            raise MethodError(f"method {self.name!r}: parameter templates must be one of {', '.join(MODES)}, "
                              f"got {mode!r}")
        require_sources(self.name, obs, SOURCES if require_all else ("metrics",))
        extra = []
        if obs.has("logs"):
            extra.append(template_series(obs, self.name, mode))
        if obs.has("traces"):
            extra.append(trace_series(obs, self.name))
        baro = Baro(**{k: v for k, v in self.params.items() if k in Baro.default_params()})
        names, values = merged_block(obs.metrics, extra)
        if baro.params["detect_onset"] is False and obs.inject_time is not None and TIME in names \
                and len(set(names)) == len(names):
            # BARO's window straight from the merged array: what BARO does on the merged frame (below), without
            # building the frame (the frame path's window takes the same rows of the same float block)
            return baro.rank_with(obs, partial(block_window, columns=names, values=values))
        merged = replace(obs, metrics=pd.DataFrame(values, columns=names))
        return baro.rank(merged, seed=seed)
