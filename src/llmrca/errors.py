"""Exceptions with messages meant for people: each names the file, field or name at fault."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


class LlmrcaError(Exception):
    """Base class for every error llmrca raises on purpose."""


class CaseError(LlmrcaError):
    """A case (or a file of one) breaks the case contract; carries every problem found."""

    def __init__(self, problems: list[Problem] | list[str], where: str | None = None):  # noqa: F821
        self.problems = list(problems)
        self.where = where
        lines = [str(p) for p in self.problems]
        head = f"{where}: " if where else ""
        if len(lines) == 1:
            msg = head + lines[0]
        else:
            msg = head + f"{len(lines)} problems: " + "; ".join(lines)
        super().__init__(msg)


class FormatError(LlmrcaError):
    """A file on disk cannot be read as the format it claims to be."""


class UnknownNameError(LlmrcaError, KeyError):
    """A method, fault, suite or format name that no registry knows."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MethodError(LlmrcaError):
    """An RCA method cannot run on the observation it was given."""


class NoAnswer(MethodError):
    """A method ran and found nothing to blame (e.g. no abnormal trace): an abstention, not a crash.

    The evaluation records it as status ``no-answer: <reason>``, scores it as a miss and reports it apart from
    errors. It is a ``MethodError`` so callers that only know that class still stop on it.
    """


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Give an ``OSError`` raised inside the file or folder being written, where it names none (``os.write``
    on a full disk, ENOSPC, names no file), so the one-line error says where it happened."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise type(e)(e.errno, e.strerror, str(path)) from e
