"""The curated public API in ``llmrca``: every listed name resolves, importing the package loads none of the heavy
libraries, and the documented round trip (simulate, rank, save, load) works through it alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

import llmrca


def test_every_public_name_resolves_and_nothing_else_does():
    for name in llmrca.__all__:
        assert getattr(llmrca, name) is not None, name
    assert set(dir(llmrca)) == set(llmrca.__all__)
    with pytest.raises(AttributeError, match="no attribute 'simulator'"):
        llmrca.simulator  # noqa: B018


def test_importing_the_package_is_light():
    code = "import sys, llmrca; print(sorted(m for m in ('numpy', 'pandas', 'scipy', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_simulate_rank_save_load_through_the_public_api(tmp_path):
    case = llmrca.simulate(fault=llmrca.Injection("cpu", "ray-head"), seed=0)
    assert isinstance(case, llmrca.Case)
    ranking = llmrca.get_method("baro").rank(case.observation, seed=0)
    assert isinstance(ranking, llmrca.Ranking) and ranking.services()[0] == "ray-head"
    again = llmrca.load_case(llmrca.save_case(case, tmp_path / "c"))
    assert again.truth.service == "ray-head"
    with pytest.raises(llmrca.UnknownNameError):
        llmrca.get_method("no-such-method")
    assert issubclass(llmrca.NoAnswer, llmrca.MethodError) and issubclass(llmrca.MethodError, llmrca.LlmrcaError)
