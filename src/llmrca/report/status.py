"""The outcome of one task, read from the ``status`` string of a result row.

The evaluation stores ``ok``; ``no-answer: <reason>`` when the method ran and found nothing to blame
(``llmrca.errors.NoAnswer``, an abstention); ``timeout`` when the task ran past its time limit; and
``error: <Type>: <message>`` for anything else. Every report counts the last three apart, and all three are
misses: only an ``ok`` row has a rank.
"""

from __future__ import annotations

import pandas as pd

OK, NO_ANSWER, TIMEOUT, ERROR = "ok", "no-answer", "timeout", "error"
KINDS = (OK, NO_ANSWER, TIMEOUT, ERROR)


def status_kind(status: object) -> str:
    """``ok``, ``no-answer``, ``timeout`` or ``error`` (any other or a missing status: the task failed)."""
    if not isinstance(status, str):
        return ERROR
    if status == OK:
        return OK
    if status == TIMEOUT or status.startswith(TIMEOUT + ":"):
        return TIMEOUT
    if status == NO_ANSWER or status.startswith(NO_ANSWER + ":"):
        return NO_ANSWER
    return ERROR


def status_kinds(statuses: pd.Series) -> pd.Series:
    """``status_kind`` of every row."""
    return pd.Series([status_kind(None if pd.isna(s) else s) for s in statuses], index=statuses.index,
                     dtype=object)
