"""The report's figures and per-case pages: same input → same bytes, intervals drawn, failures shown as
failures (never as a score of 0), statuses in words with their text, the telemetry of a real case, a page for
a case whose folder is gone, and `llmrca report --format html|md` with intervals."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from typer.testing import CliRunner

import llmrca
from llmrca.cli import app
from llmrca.evaluate import evaluate
from llmrca.evaluate.store import JOURNAL, normalize_row, rows_to_frame
from llmrca.report import summarize, to_html, write_case_pages, write_report
from llmrca.report.drilldown import case_page, page_name
from llmrca.report.figures import accuracy_bars, accuracy_vs_time, blame_counts, blame_matrices, failure_word

SERVICES = ["nginx-proxy", "ray-head", "ray-replicas-0"]


def _row(method, case, fault, root, status="ok", top=None, family="metric", rank=None, path="/nowhere/x"):
    top = top or []
    if status == "ok" and rank is None:
        rank = top.index(root) + 1 if root in top else None
    return {"method": method, "family": family, "case_id": case, "fault_type": fault, "root_cause": root,
            "indicator": None, "rank": rank if status == "ok" else None, "rank_fine": None, "fine_level": None,
            "n_candidates": 3, "top5": json.dumps(top) if status == "ok" else None,
            "top_candidates": json.dumps([[f"{s}_ctn_cpu", 3.0 - i] for i, s in enumerate(top)])
            if status == "ok" else None,
            "runtime_s": 0.5, "peak_mem_mb": 1.0, "status": status, "seed": 0, "case_path": path,
            "input_hash": "h"}


@pytest.fixture(scope="module")
def frame():
    rows = []
    for i, (fault, root) in enumerate([("cpu", "ray-head"), ("cpu", "ray-head"), ("gpu", "ray-replicas-0"),
                                       ("gpu", "ray-replicas-0")]):
        case = f"{fault}/{root}/rep-{i:02d}"
        rows.append(_row("good", case, fault, root, top=[root, "nginx-proxy", "ray-replicas-0"]))
        rows.append(_row("bad", case, fault, root, top=["nginx-proxy", root]))
        rows.append(_row("lingam", case, fault, root, status="error: ValueError: singular matrix"))
        rows.append(_row("quiet", case, fault, root, family="trace",
                         status="no-answer: nothing moved" if fault == "cpu" else "timeout"))
    return rows_to_frame(rows)


@pytest.fixture(scope="module")
def summary(frame):
    return summarize(frame, ci=0.95, resamples=100)


def test_failure_word_says_what_happened(summary):
    rows = {(r["method"], r["fault_type"]): r for _, r in summary.iterrows()}
    assert failure_word(rows[("lingam", "all")]) == "failed 4/4"
    assert failure_word(rows[("quiet", "cpu")]) == "no answer 2/2"
    assert failure_word(rows[("quiet", "gpu")]) == "timeout 2/2"
    assert failure_word(rows[("quiet", "all")]) == "failed 4/4"  # a mix of kinds
    assert failure_word(rows[("good", "all")]) is None and failure_word(rows[("chance", "all")]) is None


def test_figures_are_inline_svg_and_the_same_bytes_each_time(summary, frame):
    for draw in (lambda: accuracy_bars(summary, "avg5"), lambda: blame_matrices(frame),
                 lambda: accuracy_vs_time({"study": summary})):
        a, b = draw(), draw()
        assert a == b
        assert a.startswith("<svg") and a.endswith("</svg>")
        assert "http" not in a and "<?xml" not in a and "<metadata" not in a and "Date" not in a


def test_bars_draw_intervals_and_write_out_failures(frame, summary):
    svg = accuracy_bars(summary, "avg5")
    assert "bootstrap interval" in svg and "LineCollection" in svg  # the error bars
    assert "failed 4/4" in svg and "no answer 2/2" in svg and "timeout 2/2" in svg
    plain = accuracy_bars(summarize(frame), "avg5")
    assert "bootstrap interval" not in plain and "LineCollection" not in plain
    with pytest.raises(ValueError, match="unknown score"):
        accuracy_bars(summary, "auc")


def test_blame_counts_true_service_against_top1(frame):
    t = blame_counts(frame, "bad")
    assert t.loc["ray-head", "nginx-proxy"] == 2 and t.loc["ray-replicas-0", "nginx-proxy"] == 2
    assert int(t.to_numpy().sum()) == 4
    good = blame_counts(frame, "good")
    assert good.loc["ray-head", "ray-head"] == 2 and good.loc["ray-replicas-0", "ray-replicas-0"] == 2
    failed = blame_counts(frame, "lingam")
    assert list(failed.columns)[-1] == "(no ranking)" and int(failed["(no ranking)"].sum()) == 4


def test_html_marks_a_method_failing_everywhere_as_failed_not_zero(frame, summary):
    page = to_html({"study": frame}, summaries={"study": summary}, resamples=100)
    assert '<td class="fail" colspan="3">failed 4/4</td>' in page  # lingam's accuracy cells
    heat = page[page.index('id="heatmap"'):page.index('id="cases"')]
    lingam = re.search(r"<tr><td class=\"name\">lingam</td>(.*?)</tr>", heat).group(1)
    assert "0.00" not in lingam and lingam.count("failed 4/4") == 1 and "failed 2/2" in lingam
    assert "background:background" not in page
    fam = page[page.index('id="families"'):page.index('id="acc-0"')]
    assert re.search(r'<td style="background:#[0-9a-f]{6};color:#[0-9a-f]{6}">[\d.]+<small>[\d.]+–[\d.]+', fam)
    assert "failed (1/1 methods)" in fam and "quiet (0.00)" not in fam  # the trace family's only method
    assert 'id="figures"' in page and page.count("<svg") >= 4
    assert '<div class="scroll"><table' in page and "<script" not in page and "http" not in page


def test_coloured_cells_pick_a_readable_text_colour():
    from llmrca.report.html import _diverging, _sequential, contrast

    for v in [i / 40 for i in range(41)]:
        for style in (_sequential(v), _diverging(2 * v - 1)):
            bg, fg = re.fullmatch(r"background:(#\w{6});color:(#\w{6})", style).groups()
            assert contrast(bg, fg) >= 4.5, (v, style)
    assert contrast("#ffffff", "#000000") == pytest.approx(21.0)


def test_case_page_shows_statuses_texts_and_top_candidates(frame):
    part = frame[frame["case_id"] == "cpu/ray-head/rep-00"].assign(_view="study")
    page = case_page("cpu/ray-head/rep-00", part, ["study"])
    assert "ranked the truth 1" in page and "ranked the truth 2" in page
    assert "error: ValueError: singular matrix" in page and "no-answer: nothing moved" in page
    assert ">error<" in page and ">no answer<" in page
    assert "<li>ray-head_ctn_cpu (3)</li>" in page and '<b class="truth">ray-head</b>' in page
    assert 'id="no-case"' in page and "/nowhere/x is not there any more" in page  # the folder is gone
    names = {page_name(c) for c in frame["case_id"].unique()}
    assert len(names) == 4 and all(re.fullmatch(r"[A-Za-z0-9._-]+\.html", n) for n in names)
    assert page_name("a/b") != page_name("a_b")


@pytest.fixture(scope="module")
def real_case(tmp_path_factory):
    """One simulated case on disk, and baro's result row on it from a real evaluation."""
    root = tmp_path_factory.mktemp("case")
    case = llmrca.simulate(fault=llmrca.Injection("cpu", "ray-replicas-1"), seed=2, traces=False, logs=False,
                           case_id="cpu-r1")
    llmrca.save_case(case, root / "cases" / "cpu-r1")
    res = evaluate([root / "cases" / "cpu-r1"], ["baro"], root / "out", jobs=1, progress=False)
    return root, case, res


def test_results_keep_the_scores_of_the_first_candidates(real_case):
    _, _, res = real_case
    cands = json.loads(res["top_candidates"].iloc[0])
    assert len(cands) == 10 and all(isinstance(c, str) and isinstance(s, float) for c, s in cands)
    assert [s for _, s in cands] == sorted((s for _, s in cands), reverse=True)
    assert json.loads(res["top5"].iloc[0])[0] == cands[0][0].split("_", 1)[0]


def test_case_page_draws_the_telemetry_around_the_fault(real_case):
    root, case, res = real_case
    names = write_case_pages(root / "pages", {"all": res})
    page = (root / "pages" / names[str(res["case_id"].iloc[0])]).read_text(encoding="utf-8")
    assert 'id="telemetry-figure"' in page and "<svg" in page
    first = json.loads(res["top_candidates"].iloc[0])[0][0]
    assert f"{first}: baro ranked it first" in page
    assert case.truth.indicator is None or f"{case.truth.indicator}: true root" in page
    assert "seconds from the fault" in page
    again = write_case_pages(root / "pages2", {"all": res})
    assert (root / "pages2" / again[str(res["case_id"].iloc[0])]).read_bytes() == page.encode()


def test_report_command_writes_html_and_markdown_with_intervals(tmp_path, frame):
    out = tmp_path / "res"
    out.mkdir()
    rows = [normalize_row({k: (None if pd.isna(v) else v) for k, v in r.items()})
            for r in frame.to_dict(orient="records")]
    (out / JOURNAL).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    r = CliRunner().invoke(app, ["report", str(out), "--format", "html"])
    assert r.exit_code == 0, r.output
    page = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="figures"' in page and 'href="report-cases/' in page
    assert len(list((out / "report-cases").glob("*.html"))) == 4
    md = CliRunner().invoke(app, ["report", str(out), "-f", "md"])
    assert md.exit_code == 0 and re.search(r"\d\.\d\d \(\d\.\d\d–\d\.\d\d\)", md.output), md.output
    table = CliRunner().invoke(app, ["report", str(out)])
    assert table.exit_code == 0 and "95 % bootstrap intervals" in table.output
    assert re.search(r"good\s+│ 1\.00 \(1\.00–1\.00\)", table.output), table.output
    flat = CliRunner().invoke(app, ["report", str(out), "-f", "md", "--ci", "0"])
    assert flat.exit_code == 0 and "(0." not in flat.output
    bad = CliRunner().invoke(app, ["report", str(out), "-f", "md", "--ci", "1.5"])
    assert bad.exit_code == 1 and "--ci" in bad.output
    other = tmp_path / "r.md"
    assert CliRunner().invoke(app, ["report", str(out), "-f", "md", "--out", str(other)]).exit_code == 0
    assert other.read_text(encoding="utf-8") == md.output


def test_write_report_can_leave_out_case_pages(tmp_path, frame):
    path = write_report(tmp_path / "r.html", {"study": frame}, case_pages=False, resamples=50, figures=False)
    page = path.read_text(encoding="utf-8")
    assert "report-cases/" not in page and not (tmp_path / "report-cases").exists()
    assert 'id="figures"' not in page


def test_case_pages_drawn_in_parallel_are_the_same_bytes(tmp_path, frame):
    one = write_case_pages(tmp_path / "one", {"study": frame}, jobs=1)
    two = write_case_pages(tmp_path / "two", {"study": frame}, jobs=2)
    assert one == two and len(one) == 4
    for name in one.values():
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
