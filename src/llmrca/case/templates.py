"""Log templates: the line with its variable parts masked, given by the source or mined with Drain3.

Which template a line gets (``mode``):

- ``"auto"`` (default): the logs frame's own ``template`` where it is a non-empty text, Drain3 for the other
  lines. A source that knows its templates states them exactly (the simulator writes the format string of
  every line; RCAEval's ``logs.csv`` brings ``log_template``), and a mined template can only approximate that,
  so a given template always wins. Lines without one (logs scraped from a real deployment, RCAEval files
  without the column) are mined.
- ``"drain"``: every line is mined, the ``template`` column ignored (to compare the miner with the truth).
- ``"given"``: the column only; a line without a template is an error that names the first such row.

Drain3 runs in memory (``TemplateMiner`` without persistence, default similarity 0.4 and depth 4, numeric
tokens treated as parameters), one miner per call, over the lines in time order (ties in frame order), so the
same frame always gives the same templates. A line's template is the final template of the cluster it joined:
Drain's clusters only ever generalise, so a line stays in the cluster it was first put in.

Template ids (:func:`template_id`) are ``t`` + the CRC-32 of the template text in hex: the same template has
the same id in every case, and ids are valid inside a ``<service>_<metric>`` column name.
"""

from __future__ import annotations

import zlib
from typing import Literal

import numpy as np
import pandas as pd

from llmrca.errors import CaseError

Mode = Literal["auto", "drain", "given"]
MODES = ("auto", "drain", "given")


def template_id(template: str) -> str:
    """``t`` + 8 hex digits: the CRC-32 of the template's UTF-8 text."""
    return f"t{zlib.crc32(template.encode('utf-8')):08x}"


def mine_templates(messages: pd.Series | list[str]) -> list[str]:
    """Drain3 templates of ``messages``, in their order (one miner, in memory, for this call only)."""
    from drain3 import TemplateMiner
    from drain3.template_miner_config import TemplateMinerConfig

    config = TemplateMinerConfig()
    config.profiling_enabled = False
    miner = TemplateMiner(persistence_handler=None, config=config)
    texts = ["" if m is None or m is pd.NA else str(m) for m in messages]
    # Distinct lines are mined once: feeding a line again cannot change the cluster it already joined.
    first: dict[str, int] = {}
    for t in texts:
        if t not in first:
            first[t] = miner.add_log_message(t)["cluster_id"]
    final = {c.cluster_id: c.get_template() for c in miner.drain.clusters}
    return [final[first[t]] for t in texts]


def log_templates(logs: pd.DataFrame, mode: Mode = "auto") -> pd.Series:
    """The template of every line of ``logs`` (same index), chosen as the module docs say."""
    if mode not in MODES:
        raise CaseError([f"unknown template mode {mode!r}; known: {', '.join(MODES)}"], where="log templates")
    if "template" in logs.columns:
        given = logs["template"].astype("string")
        has = (given.notna() & (given.str.strip() != "")).fillna(False).to_numpy(dtype=bool)
    else:
        given = pd.Series(pd.NA, index=logs.index, dtype="string")
        has = np.zeros(len(logs), dtype=bool)
    if mode == "given":
        if not has.all():
            i = int(np.argmin(has))
            raise CaseError([f"row {i}: no template (mode 'given' needs the template of every line)"],
                            where="logs.template")
        return given.astype(object)
    mine = ~has if mode == "auto" else np.ones(len(logs), dtype=bool)
    out = given.astype(object).to_numpy(copy=True)
    if mine.any():
        if "message" not in logs.columns:
            raise CaseError(["missing column message (needed to mine templates)"], where="logs")
        rows = np.flatnonzero(mine)
        if "time" in logs.columns:
            t = pd.to_numeric(logs["time"], errors="coerce").to_numpy(dtype=float)[rows]
            order = rows[np.argsort(t, kind="stable")]
        else:
            order = rows
        mined = mine_templates(logs["message"].to_numpy(dtype=object)[order].tolist())
        out[order] = np.asarray(mined, dtype=object)
    return pd.Series(out, index=logs.index, dtype=object)
