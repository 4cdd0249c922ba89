"""A full or read-only disk, and option values their type lets through, give one line, not a traceback; a run
stopped by a full disk is recorded as failed, and loses or duplicates no row (issue 12, item 7)."""

import errno
import json
import os

import pytest
from typer.testing import CliRunner

import llmrca.evaluate.runner as runner_mod
import llmrca.evaluate.store as store_mod
from llmrca.cli import app
from llmrca.evaluate.store import ResultStore, read_journal
from llmrca.io import save_case
from llmrca.synthetic import planted_case

cli = CliRunner()


def run(*args):
    return cli.invoke(app, [str(a) for a in args])


def _one_line_error(r, *words):
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and r.output.strip().count("\n") == 0, r.output
    for w in words:
        assert w in r.output, r.output


class _Disk:
    """Stands in for ``os`` inside the store: after ``rows_fit`` journal writes the disk is full. The write that
    hits the limit gets half its bytes in first (a short write), as a real filling disk does."""

    def __init__(self, rows_fit: int):
        self.rows_fit = rows_fit
        self.full = False

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if self.rows_fit <= 0:
            self.full = True
            return os.write(fd, bytes(data)[: len(data) // 2])
        self.rows_fit -= 1
        return os.write(fd, data)


def _full_write_atomic(disk, real):
    def write_atomic(path, data):
        if disk.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data)

    return write_atomic


@pytest.fixture
def suite(tmp_path):
    for s in range(3):
        save_case(planted_case(seed=s), tmp_path / "suite" / f"c{s}")
    return tmp_path / "suite"


def test_journal_write_on_full_disk_keeps_whole_rows(tmp_path, monkeypatch):
    disk = _Disk(rows_fit=2)
    monkeypatch.setattr(store_mod, "os", disk)
    rows = [{"method": "m", "case_id": f"c{i}", "seed": 0, "status": "ok"} for i in range(4)]
    with ResultStore(tmp_path / "r") as store:
        store.append(rows[0])
        store.append(rows[1])
        with pytest.raises(OSError) as e:
            store.append(rows[2])
        assert e.value.errno == errno.ENOSPC and e.value.filename.endswith("results.jsonl")
        assert len(store) == 2  # the failed row is not counted as stored
        disk.full, disk.rows_fit = False, 10  # space freed
        store.append(rows[3])
    got, good = read_journal(tmp_path / "r" / "results.jsonl")
    assert good == (tmp_path / "r" / "results.jsonl").stat().st_size  # no torn or glued line
    assert [r["case_id"] for r in got] == ["c0", "c1", "c3"]


def test_evaluate_on_full_disk_is_one_line_marks_the_run_failed_and_resumes(suite, tmp_path, monkeypatch):
    out = tmp_path / "res"
    disk = _Disk(rows_fit=2)
    monkeypatch.setattr(store_mod, "os", disk)
    monkeypatch.setattr(store_mod, "write_atomic", _full_write_atomic(disk, store_mod.write_atomic))
    monkeypatch.setattr(runner_mod, "write_atomic", _full_write_atomic(disk, runner_mod.write_atomic))
    r = run("evaluate", suite, "-m", "dummy,nsigma", "--out", out, "--no-progress")
    _one_line_error(r, "No space left on device", "results.jsonl", "ENOSPC")
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and "No space left on device" in info["error"]
    rows, good = read_journal(out / "results.jsonl")
    assert len(rows) == 2 and good == (out / "results.jsonl").stat().st_size

    monkeypatch.undo()  # space freed: the same command finishes the grid, each row once
    r = run("evaluate", suite, "-m", "dummy,nsigma", "--out", out, "--no-progress")
    assert r.exit_code == 0, r.output
    rows, _ = read_journal(out / "results.jsonl")
    keys = [(x["method"], x["case_id"], x["seed"]) for x in rows]
    assert len(keys) == len(set(keys)) == 6
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["tasks"]["resumed"] == 2
    assert info["previous"][-1]["status"] == "failed"


def test_read_only_disk_while_writing_a_case_is_one_line(tmp_path, monkeypatch):
    from llmrca.io import native

    save_case(planted_case(seed=1), tmp_path / "c")

    def read_only(frame, path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(native, "_write_parquet", read_only)
    r = run("export", tmp_path / "c", "--format", "native", "--out", tmp_path / "copy")
    _one_line_error(r, "Read-only file system", "EROFS", str(tmp_path / "copy"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".copy")]  # no half-written folder left


@pytest.mark.parametrize("args,words", [
    (["evaluate", "{suite}", "--jobs", "0"], ["--jobs", "at least 1"]),
    (["evaluate", "{suite}", "--timeout", "-1"], ["--timeout", "more than 0"]),
    (["evaluate", "{suite}", "--timeout", "inf"], ["--timeout", "finite"]),
    (["evaluate", "{suite}", "--timeout", "nan"], ["--timeout", "finite"]),
    (["generate", "--suite", "demo", "--jobs", "0", "--out", "{tmp}/g"], ["--jobs"]),
    (["bench", "demo", "--timeout", "0", "--out", "{tmp}/b"], ["--timeout"]),
    (["demo", "--jobs", "-2", "--out", "{tmp}/d"], ["--jobs"]),
    (["evaluate", "{suite}", "--memory-limit", "-5"], ["--memory-limit", "finite number of MB"]),
    (["evaluate", "{suite}", "--executor", "rayx"], ["--executor", "unknown executor"]),
    (["bench", "demo", "--executor", "rayx", "--out", "{tmp}/b"], ["--executor", "rayx"]),
    (["bench", "demo", "--address", "auto", "--out", "{tmp}/b"], ["--address", "--executor ray"]),
    (["bench", "demo", "--memory-limit", "nan", "--out", "{tmp}/b"], ["--memory-limit"]),
])
def test_bad_counts_and_durations_are_one_line(suite, tmp_path, args, words):
    r = run(*[a.format(suite=suite, tmp=tmp_path) for a in args])
    _one_line_error(r, *words)
    assert not any((tmp_path / n).exists() for n in ("g", "b", "d"))  # refused before anything is written


def test_library_refuses_bad_jobs_and_timeout(suite, tmp_path):
    from llmrca.errors import LlmrcaError
    from llmrca.evaluate import evaluate

    for kw in ({"jobs": 0}, {"timeout": float("inf")}, {"timeout": -1.0}, {"memory_limit_mb": float("nan")}):
        with pytest.raises(LlmrcaError):
            evaluate([suite / "c0"], ["dummy"], tmp_path / "r", progress=False, **kw)


def test_parquet_catches_up_after_a_run_stopped_before_its_checkpoint(suite, tmp_path, monkeypatch):
    out = tmp_path / "res"
    assert run("evaluate", suite, "-m", "dummy", "--out", out, "--no-progress").exit_code == 0
    disk = _Disk(rows_fit=1)
    monkeypatch.setattr(store_mod, "os", disk)
    monkeypatch.setattr(store_mod, "write_atomic", _full_write_atomic(disk, store_mod.write_atomic))
    assert run("evaluate", suite, "-m", "dummy,nsigma", "--out", out, "--no-progress").exit_code == 1
    monkeypatch.undo()
    import pandas as pd

    assert len(pd.read_parquet(out / "results.parquet")) == 3  # behind the journal's 4 rows
    with ResultStore(out):  # opening and closing, with nothing to run, brings it up to date
        pass
    assert len(pd.read_parquet(out / "results.parquet")) == 4


def test_full_disk_while_generating_is_one_line(tmp_path, monkeypatch):
    from llmrca.io import native

    def full(frame, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(native, "_write_parquet", full)
    r = run("generate", "--suite", "demo", "--out", tmp_path / "g", "--no-progress")
    _one_line_error(r, "No space left on device", str(tmp_path / "g"))
    assert not list((tmp_path / "g").rglob("case.json"))  # no half-written case folder
