"""Reading and writing cases: native folders and RCAEval folders, one case or a suite of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from llmrca.case import Case
from llmrca.errors import FormatError
from llmrca.io import native


def case_format(path: str | Path) -> str | None:
    """'native', 'rcaeval' or None for a folder that holds no case."""
    p = Path(path)
    if not p.is_dir():
        return None
    if native.is_native_dir(p):
        return "native"
    from llmrca.io import rcaeval

    if rcaeval.is_rcaeval_dir(p):
        return "rcaeval"
    return None


def load_case(path: str | Path, *, root: str | Path | None = None, validate: bool = True) -> Case:
    """Load one case folder in whichever format it is. ``root`` (a suite folder) names RCAEval cases."""
    p = Path(path)
    if not p.exists():
        raise FormatError(f"{p}: no such file or folder")
    fmt = case_format(p)
    if fmt == "native":
        return native.read_case(p, validate=validate)
    if fmt == "rcaeval":
        from llmrca.io import rcaeval

        return rcaeval.read_case(p, root=root, validate=validate)
    raise FormatError(
        f"{p}: not a case folder (expected case.json, or RCAEval's data.csv/metrics.csv with inject_time.txt)"
    )


def save_case(case: Case, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    return native.write_case(case, out_dir, overwrite=overwrite)


def find_cases(path: str | Path) -> list[Path]:
    """Case folders at or below ``path``, sorted; a case folder's own subfolders are not searched."""
    p = Path(path)
    if not p.exists():
        raise FormatError(f"{p}: no such file or folder")
    if case_format(p):
        return [p]
    found: list[Path] = []
    for child in sorted(c for c in p.iterdir() if c.is_dir() and not c.name.startswith(".")):
        found.extend(find_cases(child))
    return found


def validate_path(path: str | Path) -> Iterator[tuple[Path, list]]:
    """(case folder, problems) for every case at or below ``path``; unreadable folders become problems too."""
    from llmrca.case.validation import Problem
    from llmrca.errors import CaseError, LlmrcaError

    dirs = find_cases(path)
    if not dirs:
        raise FormatError(f"{path}: holds no case folder")
    for d in dirs:  # every case is checked: one unreadable case does not hide the others' problems
        try:
            case = load_case(d, root=path, validate=False)
        except CaseError as e:  # a malformed case.json: its ``where`` names that file
            yield Path(e.where) if e.where else d, [
                p if isinstance(p, Problem) else Problem("error", "case", str(p)) for p in e.problems]
            continue
        except (LlmrcaError, OSError, UnicodeDecodeError) as e:
            yield d, [Problem("error", "files", str(e))]
            continue
        yield d, case.problems()


def load_suite(path: str | Path, *, validate: bool = True) -> Iterator[Case]:
    """Yield the cases below ``path`` one at a time (lazily), in sorted folder order."""
    root = Path(path)
    dirs = find_cases(root)
    if not dirs:
        raise FormatError(f"{root}: holds no case folder")
    for d in dirs:
        yield load_case(d, root=root, validate=validate)
