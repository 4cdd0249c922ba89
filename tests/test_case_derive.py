import numpy as np
import pandas as pd
import pytest

from llmrca.case.derive import log_counts, trace_series, window_starts
from llmrca.errors import CaseError

T0 = 1_700_000_000.0


def _logs(rows):
    return pd.DataFrame(rows, columns=["time", "service", "level", "message", "template"])


def test_window_starts_cover_the_range():
    assert window_starts(T0, T0 + 15, 5).tolist() == [T0, T0 + 5, T0 + 10]
    assert window_starts(T0, T0 + 16, 5).tolist() == [T0, T0 + 5, T0 + 10, T0 + 15]
    with pytest.raises(CaseError, match="interval"):
        window_starts(T0, T0 + 10, 0)
    with pytest.raises(CaseError, match="start < end"):
        window_starts(T0, T0, 5)


def test_log_counts_per_service_and_window():
    logs = _logs([
        (T0 + 0.5, "a", "INFO", "x", "x"),
        (T0 + 4.9, "a", "ERROR", "y", "y"),
        (T0 + 5.0, "b", "WARNING", "z", "z"),
        (T0 + 12.0, "a", "ERROR", "y", "y"),
        (T0 - 1.0, "a", "ERROR", "early", "early"),  # outside the range
        (T0 + 15.0, "b", "INFO", "late", "late"),  # end is exclusive
    ])
    out = log_counts(logs, 5, T0, T0 + 15)
    assert out.columns.tolist() == ["time", "a_log-count", "a_log-error", "b_log-count", "b_log-error"]
    assert out["time"].tolist() == [T0, T0 + 5, T0 + 10]
    assert out["a_log-count"].tolist() == [2.0, 0.0, 1.0]
    assert out["a_log-error"].tolist() == [1.0, 0.0, 1.0]
    assert out["b_log-count"].tolist() == [0.0, 1.0, 0.0]
    assert out["b_log-error"].tolist() == [0.0, 0.0, 0.0]
    assert all(out[c].dtype == np.float64 for c in out.columns)


def test_log_counts_fixed_services_get_zero_columns():
    logs = _logs([(T0 + 1, "a", "INFO", "x", "x"), (T0 + 2, "b", "INFO", "x", "x")])
    out = log_counts(logs, 5, T0, T0 + 10, services=["a", "c"])
    assert out.columns.tolist() == ["time", "a_log-count", "a_log-error", "c_log-count", "c_log-error"]
    assert out["a_log-count"].tolist() == [1.0, 0.0] and out["c_log-count"].tolist() == [0.0, 0.0]


def test_log_counts_name_bad_input():
    with pytest.raises(CaseError, match="level"):
        log_counts(pd.DataFrame({"time": [T0], "service": ["a"]}), 5, T0, T0 + 10)
    with pytest.raises(CaseError, match="'_'"):
        log_counts(_logs([(T0, "bad_name", "INFO", "x", "x")]), 5, T0, T0 + 10)


def _spans(rows):
    return pd.DataFrame(rows, columns=["service", "operation", "start_time_us", "duration_us", "status"])


def test_trace_series_mean_latency_of_ok_spans_and_error_counts():
    us = 1_000_000
    spans = _spans([
        ("gw", "POST /x", int(T0 * us) + 1 * us, 2 * us, "OK"),
        ("gw", "POST /x", int(T0 * us) + 2 * us, 4 * us, "OK"),
        ("gw", "POST /x", int(T0 * us) + 3 * us, 60 * us, "ERROR"),  # errors do not enter the latency
        ("gw", "POST /x", int(T0 * us) + 11 * us, 1 * us, "ERROR"),
        ("rep", "llm_request", int(T0 * us) + 6 * us, 500_000, "OK"),
    ])
    out = trace_series(spans, 5, T0, T0 + 15)
    assert out.columns.tolist() == ["time", "gw_POST /x_latency", "gw_POST /x_error-count",
                                    "rep_llm_request_latency", "rep_llm_request_error-count"]
    lat = out["gw_POST /x_latency"].to_numpy()
    assert lat[0] == pytest.approx(3.0) and np.isnan(lat[1]) and np.isnan(lat[2])
    assert out["gw_POST /x_error-count"].tolist() == [1.0, 0.0, 1.0]
    assert out["rep_llm_request_latency"].tolist()[1] == pytest.approx(0.5)
    assert out["rep_llm_request_error-count"].tolist() == [0.0, 0.0, 0.0]


def test_trace_series_names_missing_columns():
    with pytest.raises(CaseError, match="status"):
        trace_series(pd.DataFrame({"service": ["a"], "operation": ["o"], "start_time_us": [0], "duration_us": [1]}),
                     5, T0, T0 + 10)
