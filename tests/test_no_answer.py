"""Abstention is not a crash: a method that ran and found nothing to blame raises ``NoAnswer``, one that cannot
run raises another ``MethodError``, and every report counts a ``no-answer`` row apart from errors and timeouts
(and scores it as a miss)."""

from __future__ import annotations

import io
from dataclasses import replace
from functools import cache

import numpy as np
import pytest
from _trace_cases import SHORT
from rich.console import Console
from typer.testing import CliRunner

from llmrca.case import Observation
from llmrca.errors import MethodError, NoAnswer
from llmrca.evaluate.store import rows_to_frame
from llmrca.methods import get_method
from llmrca.report import case_ranks, print_table, summarize, to_html, to_json, to_markdown
from llmrca.report.status import status_kind
from llmrca.synthetic import planted_case

# --------------------------------------------------------------------------------------------- methods


@cache
def normal_run() -> Observation:
    """A fault-free simulated run: nothing is abnormal after the (nominal) injection time."""
    from llmrca.sim import SimConfig, simulate

    return simulate(SimConfig(**SHORT), fault=None, seed=0).observation


def _cannot_run(name: str, obs: Observation, match: str, **params: object) -> None:
    with pytest.raises(MethodError, match=match) as e:
        get_method(name, **params).rank(obs)
    assert not isinstance(e.value, NoAnswer), f"{name}: missing data is a failure to run, not an abstention"


@pytest.mark.parametrize("name", ["tracerca", "microrank", "microrca", "microscope"])
def test_nothing_abnormal_in_a_fault_free_run_is_no_answer(name):
    obs = normal_run()
    with pytest.raises(NoAnswer, match=name):
        get_method(name).rank(obs)


@pytest.mark.parametrize("name", ["tracerca", "microrank"])
def test_trace_methods_without_traces_or_history_cannot_run(name):
    from llmrca.case.schema import empty_traces

    obs = normal_run()
    _cannot_run(name, replace(obs, traces=empty_traces()), "needs traces")
    _cannot_run(name, replace(obs, inject_time=None), "inject_time")
    first = float(obs.traces["start_time_us"].min()) / 1e6
    _cannot_run(name, replace(obs, inject_time=first - 10), "before inject_time")


@pytest.mark.parametrize("name", ["microrca", "microscope", "monitorrank"])
def test_graph_methods_without_an_injection_time_cannot_run(name):
    _cannot_run(name, replace(normal_run(), inject_time=None), "inject_time")


def _planted() -> Observation:
    return planted_case(frontend=True, seed=3).observation


def _with_columns(obs: Observation, value: float, columns: list[str] | None = None) -> Observation:
    m = obs.metrics.copy()
    for c in columns if columns is not None else obs.metric_columns:
        m[c] = value
    return replace(obs, metrics=m)


@pytest.mark.parametrize("name", ["granger-randomwalk", "pc-randomwalk", "microcause"])
def test_a_constant_sli_is_no_answer_a_missing_one_cannot_run(name):
    obs = _planted()
    assert get_method(name).rank(obs).services()  # the unchanged case ranks
    with pytest.raises(NoAnswer, match="constant in the window"):
        get_method(name).rank(_with_columns(obs, 1.0, ["frontend_latency"]))
    _cannot_run(name, _with_columns(obs, np.nan, ["frontend_latency"]), "missing or non-finite")


def test_monitorrank_abstains_when_nothing_follows_the_sli():
    obs = _planted()
    assert get_method("monitorrank").rank(obs).services()
    with pytest.raises(NoAnswer, match="no series correlates"):
        get_method("monitorrank").rank(_with_columns(obs, 1.0, ["frontend_latency"]))


@pytest.mark.parametrize(("name", "params"), [("causalai", {}), ("rcd", {}), ("baro", {"detect_onset": True}),
                                              ("causalrca", {"epochs": 5, "rounds": 1})])
def test_all_constant_metrics_is_no_answer_all_missing_cannot_run(name, params):
    if name == "causalrca":
        pytest.importorskip("torch")
    obs = _planted()
    with pytest.raises(NoAnswer):
        get_method(name, **params).rank(_with_columns(obs, 2.0))
    _cannot_run(name, _with_columns(obs, np.nan), "non-finite|non-constant", **params)


def test_baro_abstains_when_bocpd_finds_no_onset():
    obs = _planted()
    with pytest.raises(NoAnswer, match="no change point"):
        get_method("baro", detect_onset=True, bocpd_threshold=1.0).rank(obs)


def test_causalrca_abstains_on_an_empty_learned_graph():
    pytest.importorskip("torch")
    with pytest.raises(NoAnswer, match="no edge"):
        get_method("causalrca", epochs=5, rounds=1, edge_threshold=1e9).rank(_planted())


# --------------------------------------------------------------------------------------------- reports


def _row(method, case, fault, rank, status="ok", family="trace", root="svc-1"):
    return {"method": method, "family": family, "case_id": case, "fault_type": fault, "root_cause": root,
            "indicator": None, "rank": rank, "rank_fine": None, "fine_level": False, "n_candidates": 5,
            "top5": "[]", "runtime_s": 1.0, "peak_mem_mb": 1.0, "status": status, "seed": 0,
            "case_path": f"/cases/{case}"}


NA = "no-answer: tracerca: no abnormal invocation after inject_time"


@pytest.fixture()
def frame():
    rows = [_row("tracerca", "c1", "cpu", 1), _row("tracerca", "c2", "cpu", None, NA),
            _row("tracerca", "c3", "memory", None, NA), _row("tracerca", "c4", "memory", None, "timeout"),
            _row("baro", "c1", "cpu", 2, family="metric"),
            _row("baro", "c2", "cpu", None, "error: MethodError: boom", family="metric"),
            _row("baro", "c3", "memory", 1, family="metric"), _row("baro", "c4", "memory", 1, family="metric")]
    return rows_to_frame(rows)


def test_status_kinds():
    assert [status_kind(s) for s in ("ok", NA, "no-answer", "timeout", "error: X: y", None)] == \
        ["ok", "no-answer", "no-answer", "timeout", "error", "error"]
    assert status_kind("error: NoAnswerish: no-answer") == "error"  # only the prefix decides


def test_summary_counts_no_answers_apart_and_scores_them_as_misses(frame):
    s = summarize(frame)
    tr = s[(s["method"] == "tracerca") & (s["fault_type"] == "all")].iloc[0]
    assert (tr.n, tr.errors, tr.timeouts, tr.no_answer) == (4, 0, 1, 2)
    assert tr.ac1 == pytest.approx(0.25)  # one rank 1 among 4: both no-answers and the timeout are misses
    cpu = s[(s["method"] == "tracerca") & (s["fault_type"] == "cpu")].iloc[0]
    assert (cpu.errors, cpu.no_answer, cpu.ac1) == (0, 1, pytest.approx(0.5))
    baro = s[(s["method"] == "baro") & (s["fault_type"] == "all")].iloc[0]
    assert (baro.errors, baro.timeouts, baro.no_answer) == (1, 0, 0)
    rec = next(r for r in to_json(s) if r["method"] == "tracerca" and r["fault_type"] == "all")
    assert (rec["errors"], rec["timeouts"], rec["no_answer"]) == (0, 1, 2)


def test_markdown_and_rich_tables_show_the_no_answer_column(frame):
    s = summarize(frame)
    md = to_markdown(s)
    assert "| Method | Family | Time/case (s) | Cases | Errors | Timeouts | No answer |" in md
    assert "| tracerca | trace | 1.00 | 4 | 0 | 1 | 2 |" in md
    assert "| baro | metric | 1.00 | 4 | 1 | 0 | 0 |" in md
    assert "no-answers" in md
    buf = io.StringIO()
    print_table(s, Console(file=buf, width=80, color_system=None))
    text = buf.getvalue()
    assert "E/T/N" in text and "no answer" in text and max(len(x) for x in text.splitlines()) <= 80
    rows = [x.replace(" ", "") for x in text.splitlines() if "│ all " in x]
    assert "│4│0/1/2│" in [x[-9:] for x in rows], rows  # tracerca over all cases: 0 errors, 1 timeout, 2 no-answers
    assert "│4│1/0/0│" in [x[-9:] for x in rows], rows  # baro


def test_case_ranks_mark_no_answer_apart_from_errors_and_timeouts(frame):
    t = case_ranks(frame).set_index("case_id")
    assert t["tracerca"].tolist() == [1, "N", "N", "T"]
    assert t["baro"].tolist() == [2, "E", 1, 1]


def test_html_shows_no_answer_cells_counts_and_legend(frame):
    page = to_html({"study": frame}, resamples=20)
    assert page.count('<td class="rna">N</td>') == 2 and page.count('<td class="re">E</td>') == 1
    assert page.count('<td class="rt">T</td>') == 1
    assert "N no answer" in page and "<th rowspan=\"2\">No answer</th>" in page
    assert '<td class="na">2</td>' in page  # tracerca's no-answers, apart from its errors (0) and timeout (1)


def test_bench_overview_shows_errors_timeouts_and_no_answers(frame):
    from llmrca.bench import print_overview

    buf = io.StringIO()
    print_overview(summarize(frame), Console(file=buf, width=80, color_system=None))
    text = buf.getvalue()
    assert max(len(x) for x in text.splitlines()) <= 80
    tr = next(x for x in text.splitlines() if x.strip().startswith("tracerca"))
    baro = next(x for x in text.splitlines() if x.strip().startswith("baro"))
    assert tr.split()[-1] == "0/1/2" and baro.split()[-1] == "1/0/0"
    assert "E/T/N" in text and "no answer" in text


def test_cli_rank_says_no_answer_with_its_own_exit_status(tmp_path):
    from llmrca.cli import app
    from llmrca.io import save_case
    from llmrca.sim import SimConfig, simulate

    case = simulate(SimConfig(**SHORT), fault=None, seed=0)
    path = save_case(case, tmp_path / "normal")
    r = CliRunner().invoke(app, ["rank", str(path), "-m", "tracerca"])
    assert r.exit_code == 3, r.output
    assert "no answer:" in r.output and "nothing to localize" in r.output and "error:" not in r.output
    r = CliRunner().invoke(app, ["rank", str(path), "-m", "baro"])
    assert r.exit_code == 0, r.output
