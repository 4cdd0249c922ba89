"""Methods whose cost cannot fit a 1,000-column case say so before starting, with the count and the limit
(causalrca before importing torch)."""

from __future__ import annotations

import pytest

from llmrca.errors import MethodError
from llmrca.methods import get_method
from llmrca.synthetic import planted_case


@pytest.mark.parametrize("name", ["microcause", "causalrca"])
def test_wide_cases_are_refused_before_starting(name):
    obs = planted_case(n_services=6, frontend=True, seed=0).observation  # 21 columns
    with pytest.raises(MethodError, match=r"21 [\w-]+ series, more than max_columns=10"):
        get_method(name, max_columns=10).rank(obs, seed=0)


@pytest.mark.parametrize("name", ["microcause", "causalrca"])
def test_max_columns_must_be_an_integer_or_none(name):
    obs = planted_case(n_services=3, frontend=True, seed=0).observation
    with pytest.raises(MethodError, match="max_columns"):
        get_method(name, max_columns=1).rank(obs, seed=0)
