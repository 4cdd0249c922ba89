"""Export a case, or every case of a suite, in another layout (RCAEval's or the native one), in one metric view.

A suite keeps its shape: native cases go to ``OUT/<the case's path below the suite>``; RCAEval cases to
``OUT/<service>_<fault>/<rep>`` (RCAEval's own layout, ``llmrca.io.rcaeval.write_case``). Two cases of a suite
that RCAEval's layout would put in one folder are refused before anything is written, never overwritten."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmrca.errors import LlmrcaError

FORMATS = ("rcaeval", "native")


@dataclass(frozen=True)
class Skipped:
    source: Path
    why: str


@dataclass(frozen=True)
class Exported:
    source: Path  # the case folder read
    path: Path  # the folder written
    view: str  # the view written ("all" for a case of foreign data, which has no views)
    columns: int  # metric columns written


def export_cases(path: str | Path, out_dir: str | Path, *, fmt: str = "rcaeval", view: str = "all",
                 overwrite: bool = False, skipped: list[Skipped] | None = None) -> list[Exported]:
    """Export the case at ``path``, or every case below it, into ``out_dir``; returns what was written.

    RCAEval's layout names one root cause per folder, so a suite's multi-fault cases are not exported there (a
    single multi-fault case is, with its first root and a warning); each one left out is appended to ``skipped``
    when given."""
    from llmrca.case.views import effective_view, select_view
    from llmrca.io import case_format, find_cases, load_case, save_case

    if fmt not in FORMATS:
        raise LlmrcaError(f"unknown --format {fmt!r}; use {' or '.join(FORMATS)}")
    src = Path(path)
    single = case_format(src) is not None
    dirs = [src] if single else find_cases(src)
    if not dirs:
        raise LlmrcaError(f"{src}: holds no case folder")
    out = Path(out_dir)

    def viewed(d: Path):  # one case at a time: a suite is never held in memory whole
        c = load_case(d, root=None if single else src)
        v = effective_view(c, view)
        return (select_view(c, v, where=str(d)) if v != "all" else c), v

    if fmt == "rcaeval" and not single:
        from llmrca.io.rcaeval import planned_folder

        seen: dict[Path, Path] = {}
        kept = []
        for d in dirs:
            c = load_case(d, root=src)
            if c.truth.is_multi:
                if skipped is not None:
                    skipped.append(Skipped(d, f"{len(c.truth.faults)} faults: RCAEval's layout names one root cause "
                                              "(export it with --format native)"))
                continue
            kept.append(d)
            target = planned_folder(c, out)
            if target is not None and target in seen:
                raise LlmrcaError(f"{d} and {seen[target]} would both be written to {target} (RCAEval's "
                                  "layout names a folder by root-cause service, fault and repetition); export "
                                  "them to separate folders")
            if target is not None:
                seen[target] = d
        dirs = kept
    done = []
    for d in dirs:
        c, v = viewed(d)
        if fmt == "rcaeval":
            from llmrca.io.rcaeval import write_case

            w = write_case(c, out, overwrite=overwrite)
        else:
            w = save_case(c, out if single else out / d.relative_to(src), overwrite=overwrite)
        done.append(Exported(d, Path(w), v, len(c.observation.metric_columns)))
    return done
