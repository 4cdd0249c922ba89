"""Which results folder a report reads, and under which metric view its rows were computed.

An ``llmrca evaluate`` folder holds one view (its ``run.json`` records it; resuming with another is refused); a
bench folder holds one ``results-<view>`` folder per view. A report names the view in its title, so a table
is never read as another view's."""

from __future__ import annotations

import json
from pathlib import Path

from llmrca.errors import FormatError, LlmrcaError
from llmrca.evaluate.store import JOURNAL, PARQUET, RUN_JSON

UNRECORDED = "unrecorded"  # a folder whose run.json names no view (written by hand or by an older llmrca)


def folder_view(folder: Path) -> str | None:
    """The view recorded in ``folder/run.json`` (None when it records none: an older or hand-made folder)."""
    try:
        info = json.loads((folder / RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    params = info.get("params") if isinstance(info, dict) else None
    v = params.get("view") if isinstance(params, dict) else None
    return v if isinstance(v, str) else None


def results_folder(path: str | Path, view: str | None = None) -> tuple[Path, str]:
    """(the results folder to read, its view) for ``path``: a results folder or file, or a bench folder.

    ``view`` None: the folder's own view (a bench folder: the default view's results, else its only one). A
    ``view`` that the folder was not computed under is an error naming the view it holds.
    """
    from llmrca.case.views import VIEWS
    from llmrca.options import DEFAULT_VIEW

    p = Path(path)
    if view is not None and view not in VIEWS:
        raise LlmrcaError(f"--view: unknown view {view!r}; known: {', '.join(VIEWS)}")
    if p.is_dir() and not (p / JOURNAL).is_file() and not (p / PARQUET).is_file():
        held = [v for v in VIEWS if (p / f"results-{v}").is_dir()]
        if held:  # a bench folder
            want = view or (DEFAULT_VIEW if DEFAULT_VIEW in held else held[0])
            if want not in held:
                raise LlmrcaError(f"{p}: holds no results-{want} (views: {', '.join(held)}); pass --view "
                                  f"{' or '.join(held)}")
            return p / f"results-{want}", want
        raise FormatError(f"{p}: holds no results ({JOURNAL} or {PARQUET}) and no results-VIEW folder")
    folder = p if p.is_dir() else p.parent
    own = folder_view(folder)
    if view is not None and own is not None and view != own:
        raise LlmrcaError(f"{p}: its results were computed under the {own} view, not {view}; pass --view {own}")
    return p, (own or view or UNRECORDED)


def view_title(view: str) -> str:
    """How a report's title names the view of its rows."""
    return "view not recorded" if view == UNRECORDED else f"{view} view"
