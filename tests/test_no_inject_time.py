"""Cases without an inject time (a case collected from a user's Prometheus): every registered method either
estimates the onset and ranks, or says in one line (a MethodError) that it needs the injection time. Never a
traceback: not on NaN-padded rows, not on a column that repeats one float (whose std is ~1e-16, not 0)."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from _trace_cases import simulated
from test_methods_doc import needs_table
from typer.testing import CliRunner

import llmrca
from llmrca.cli import app
from llmrca.methods import names

# What docs/methods.md says of each method's inject_time ("needed", "estimated", "not used"): the test holds
# every method to it, so the page and the code agree.
NEEDS = {name: row["inject_time"] for name, row in needs_table().items()}
ESTIMATE_THE_ONSET = tuple(n for n, v in NEEDS.items() if v != "needed")  # dummy needs none, BARO uses BOCPD


def test_the_page_says_which_methods_rank_without_an_inject_time():
    assert set(NEEDS) == set(names())
    assert {"dummy", "baro", "mm-baro"} <= set(ESTIMATE_THE_ONSET)


def _case(view: str = "study"):
    from llmrca.case.views import select_view

    return select_view(simulated("cpu", "ray-replicas-1"), view)


def _without_inject_time(view: str = "study", *, padded: bool = False):
    """The case with inject_time None; ``padded``: 10 all-NaN rows before it (a window that began before the
    deployment) and a constant column of 1.1 (which a std test takes for a moving one)."""
    c = _case(view)
    obs = dataclasses.replace(c.observation, inject_time=None)
    if padded:
        m = obs.metrics.copy()
        m[f"{c.truth.service}_fb_free"] = 1.1  # over these rows its std is ~2e-16 from rounding, not 0
        pad = m.iloc[:10].copy()
        pad[[x for x in m.columns if x != "time"]] = np.nan
        pad["time"] = m["time"].iloc[0] - obs.interval * np.arange(10, 0, -1)
        obs = dataclasses.replace(obs, metrics=pd.concat([pad, m], ignore_index=True))
    return c.truth.service, obs


@pytest.mark.parametrize("padded", [False, True], ids=["plain", "nan-padded"])
@pytest.mark.parametrize("method", names())
def test_every_method_ranks_or_says_it_needs_an_inject_time(method, padded):
    _, obs = _without_inject_time(padded=padded)
    try:
        ranking = llmrca.get_method(method).rank(obs, seed=0)
    except llmrca.NoAnswer as e:  # an abstention is allowed, in one line
        assert method in ESTIMATE_THE_ONSET and "\n" not in str(e) and str(e)
        return
    except llmrca.MethodError as e:
        assert method not in ESTIMATE_THE_ONSET, f"{method} should estimate the onset: {e}"
        assert "\n" not in str(e) and "inject_time" in str(e), str(e)
        return
    assert len(ranking) > 0 and all(np.isfinite(s) or np.isnan(s) for s in ranking.scores)


@pytest.mark.parametrize("method", ["baro", "mm-baro"])
def test_baro_finds_the_onset_on_the_full_view_with_padding_and_a_repeated_float(method):
    """The reported crash: BOCPD on many columns (its principal-component step) with a constant float column
    raised ``ValueError: array must not contain infs or NaNs``; now it finds the fault's onset."""
    root, obs = _without_inject_time("all", padded=True)
    assert len(obs.metric_columns) > 10  # the principal-component path
    ranking = llmrca.get_method(method).rank(obs, seed=0)
    assert ranking.services()[0] == root


def test_rank_command_on_a_case_without_inject_time_prints_a_ranking_or_one_line(tmp_path):
    c = _case("all")
    root, obs = _without_inject_time("all", padded=True)
    from llmrca.case import GroundTruth

    case = dataclasses.replace(c, observation=obs, truth=GroundTruth(service=None))
    llmrca.save_case(case, tmp_path / "c")
    r = CliRunner().invoke(app, ["rank", str(tmp_path / "c"), "-m", "baro", "--view", "all", "--json"])
    assert r.exit_code == 0, r.output
    import json

    assert json.loads(r.output)["services"][0] == root
    r = CliRunner().invoke(app, ["rank", str(tmp_path / "c"), "-m", "nsigma"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip().count("\n") == 0 and "inject_time" in r.output
