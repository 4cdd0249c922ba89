"""The grid on Ray gives the rows the local pool gives, keeps the seal, the timeout and the memory cap, and resumes.

Runs on a local Ray (2 CPUs) that the run starts and stops; CI installs the ``ray`` extra, so it runs there.
"""

import json

import pytest

from llmrca.evaluate import evaluate, load_results
from llmrca.io import save_case
from llmrca.synthetic import planted_case

ray = pytest.importorskip("ray")

METHODS = ["fake-shift", "fake-short", "fake-raise", "fake-abstain", "fake-sleep", "fake-hog", "fake-peek",
           "nsigma"]


pytestmark = pytest.mark.usefixtures("fakes")  # the test-only methods (tests/conftest.py)


def test_ray_rows_equal_local_rows(tmp_path):
    paths = []
    for s in range(3):
        case = planted_case(seed=s, n_services=6, n_rows=80, inject_row=40)
        case.id = f"LEAK-{case.truth.service}/rep-{s}"
        paths.append(str(save_case(case, tmp_path / "cases" / f"c{s}")))
    marker = tmp_path / "found.txt"
    kw = {"jobs": 2, "timeout": 2.0, "memory_limit_mb": 256, "progress": False,
          "method_params": {"fake-peek": {"marker": str(marker)}}}
    local = evaluate(paths, METHODS, tmp_path / "local", **kw)
    remote = evaluate(paths, METHODS, tmp_path / "ray", executor="ray", **kw)
    assert not ray.is_initialized()  # the run's own Ray is stopped afterwards
    cols = ["method", "case_id", "rank", "status", "fault_type", "root_cause", "top5"]
    key = ["method", "case_id"]
    a = local[cols].sort_values(key).reset_index(drop=True)
    b = remote[cols].sort_values(key).reset_index(drop=True)
    assert a.equals(b), a.compare(b)
    kinds = {m: set(b.loc[b["method"] == m, "status"].str.split(":").str[0]) for m in METHODS}
    assert kinds["fake-sleep"] == {"timeout"} and kinds["fake-abstain"] == {"no-answer"}
    assert kinds["fake-hog"] == {"error"} and kinds["fake-shift"] == {"ok"}
    assert (b.loc[b["method"] == "fake-hog", "status"].str.contains("memory limit 256 MB")).all()
    # the seal holds on Ray too: the peeking method found nothing in six runs (three local, three on Ray)
    assert [json.loads(line) for line in marker.read_text().splitlines()] == [[]] * 6
    # the same store and resume: a second Ray run computes nothing
    evaluate(paths, METHODS, tmp_path / "ray", executor="ray", **kw)
    info = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert info["tasks"]["to_run"] == 0 and info["params"]["executor"] == "ray"
    assert len(load_results(tmp_path / "ray")) == len(paths) * len(METHODS)
