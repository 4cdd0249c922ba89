"""`llmrca testbed collect` against a fake Prometheus (no testbed is started): a user's own cluster gets a ground
truth and an inject time from --fault/--target/--inject-time; a case without them ranks with BARO (or says in
one line why not) and `evaluate` says why its table is empty; a testbed window that starts before the testbed
came up is trimmed to its start."""

import json

import numpy as np
import pytest
from _fake_prometheus import RangeQueryHandler, serving
from typer.testing import CliRunner

import llmrca
from llmrca.cli import app

T0, T1, STEP = 1_700_000_000.0, 1_700_000_600.0, 5.0
ONSET = 1_700_000_400.0
SERVICES = ("ray-head", "ray-replicas-0", "ray-replicas-1", "ray-replicas-2")
ROOT = "ray-replicas-1"
REPEATED = 1.1


def _value(query: str, service: str, t: float) -> float | None:
    """A deterministic cluster: noisy CPU and memory per replica, the root's CPU up 1.5 cores from ONSET, and a
    GPU gauge that repeats one float (1.1: over these 121 rows its std is 4e-16 from rounding, not 0), the column
    that once crashed BOCPD."""
    i = round((t - T0) / STEP)
    k = SERVICES.index(service)
    noise = np.random.default_rng([i, k, len(query) % 97]).normal(0, 0.02)
    if "container_cpu_usage_seconds_total" in query:
        return 0.5 + noise + (1.5 if service == ROOT and t >= ONSET else 0.0)
    if "container_memory_working_set_bytes" in query:
        return 2e9 * (1 + noise)
    if "DCGM_FI_DEV_GPU_UTIL" in query:
        return REPEATED
    return None


class _Prom(RangeQueryHandler):
    data_from = T0  # no series has a value before this (a cluster younger than the window)

    def series(self, query, start, end, step):
        result = []
        for s in SERVICES:
            values = [[float(t), str(v)] for t in np.arange(start, end + 1e-9, step)
                      if t >= self.data_from and (v := _value(query, s, float(t))) is not None]
            if values:
                result.append({"metric": {"service": s}, "values": values})
        return result


@pytest.fixture(scope="module")
def prom():
    with serving(_Prom) as (_, url):
        yield url


def run(*args):
    return CliRunner().invoke(app, ["testbed", "collect", *map(str, args)])


def test_collect_from_a_users_prometheus_with_a_ground_truth(prom, tmp_path):
    r = run("--prometheus", prom, "--since", T0, "--until", T1, "--inject-time", ONSET, "--fault", "cpu",
            "--target", ROOT, "--out", tmp_path / "c", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # stdout is the JSON document alone
    assert doc["inject_time"] == ONSET and doc["truth"]["service"] == ROOT and doc["truth"]["fault_type"] == "cpu"
    case = llmrca.load_case(tmp_path / "c")
    assert case.truth.service == ROOT and case.truth.fault_type == "cpu" and case.truth.start == ONSET
    assert case.observation.inject_time == ONSET
    assert "cpu on ray-replicas-1" in r.stderr
    r = CliRunner().invoke(app, ["rank", str(tmp_path / "c"), "-m", "nsigma", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["services"][0] == ROOT


@pytest.mark.parametrize("args, message", [
    (["--fault", "cpu", "--target", ROOT], "--fault needs --inject-time"),
    (["--fault", "cpu", "--inject-time", ONSET], "--fault and --target go together"),
    (["--fault", "no-such-fault", "--target", ROOT, "--inject-time", ONSET], "unknown fault 'no-such-fault'"),
    (["--fault", "cpu", "--target", "nope", "--inject-time", ONSET], "--target 'nope': no series"),
    (["--inject-time", T1 + 60], "is not inside the window"),
    (["--fault", "cpu", "--target", ROOT, "--inject-time", ONSET, "--fault-end", ONSET - 5], "is not after"),
])
def test_a_half_given_or_wrong_truth_is_one_line(prom, tmp_path, args, message):
    r = run("--prometheus", prom, "--since", T0, "--until", T1, *args, "--out", tmp_path / "c")
    assert r.exit_code == 1 and message in r.output, r.output
    assert "Traceback" not in r.output and r.output.strip().count("\n") == 0
    assert not (tmp_path / "c").exists()


def test_truth_options_are_only_for_prometheus(tmp_path):
    r = run("--since", T0, "--until", T1, "--fault", "cpu", "--target", ROOT, "--inject-time", ONSET,
            "--out", tmp_path / "c", "--run-dir", tmp_path / "rd")
    assert r.exit_code == 1 and "are for --prometheus" in r.output


def test_a_case_without_truth_ranks_with_baro_and_evaluate_says_why_its_table_is_empty(prom, tmp_path):
    r = run("--prometheus", prom, "--since", T0, "--until", T1, "--out", tmp_path / "c")
    assert r.exit_code == 0, r.output
    assert "truth: none given" in r.output and "--inject-time" in r.output
    collected = llmrca.load_case(tmp_path / "c").observation
    assert collected.inject_time is None
    assert 0 < collected.metrics[f"{ROOT}_gpu_util"].std(ddof=0) < 1e-12  # the trap is there
    for view in ("study", "all"):  # all: 20 columns (BOCPD's principal components) with the repeated float
        r = CliRunner().invoke(app, ["rank", str(tmp_path / "c"), "-m", "baro", "--json", "--view", view])
        assert r.exit_code == 0, r.output  # BOCPD finds the onset: a ranking, not a traceback
        assert json.loads(r.output)["services"][0] == ROOT and json.loads(r.output)["view"] == view
    r = CliRunner().invoke(app, ["rank", str(tmp_path / "c"), "-m", "nsigma"])
    assert r.exit_code == 1 and "inject_time" in r.output and r.output.strip().count("\n") == 0
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "c"), "-m", "baro,nsigma", "-o", str(tmp_path / "r"),
                                 "--no-progress", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert "0 of 1 case(s) had a ground truth" in doc["empty_because"] and doc["summary"] == []
    assert "no accuracy table: 0 of 1 case(s) had a ground truth" in r.stderr


def test_collect_trims_rows_from_before_the_testbed_came_up(prom, tmp_path):
    """A window asked from before ``up_since`` (state.json) starts at it, and the command says so."""
    from llmrca.testbed.config import live_config

    port = int(prom.rsplit(":", 1)[1])
    up = T0 + 100.0
    state = {"config": live_config().to_dict(), "ports": {"prometheus": port}, "services": list(SERVICES),
             "node": "node-cpu-0", "replicas": list(SERVICES), "gateway": "ray-head", "proxy": "ray-head",
             "status": "up", "up_since": up}
    rd = tmp_path / "rd"
    rd.mkdir()
    (rd / "state.json").write_text(json.dumps(state), encoding="utf-8")
    from llmrca.testbed.collector import collect_case

    case = collect_case(rd, T0, T1, traces=False, logs=False, step=STEP)
    t = case.observation.metrics["time"]
    assert t.iloc[0] == up and case.provenance["trimmed"] == {"asked_start": T0, "up_since": up}
    assert case.provenance["window"][0] == up
    untrimmed = collect_case(rd, up, T1, traces=False, logs=False, step=STEP)
    assert "trimmed" not in untrimmed.provenance and untrimmed.observation.metrics["time"].iloc[0] == up
    with pytest.raises(llmrca.LlmrcaError, match="before the testbed came up"):
        collect_case(rd, T0, T0 + 50, traces=False, logs=False, step=STEP)
    r = run("--since", T0, "--until", T1, "--run-dir", rd, "--out", tmp_path / "c", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["trimmed"]["up_since"] == up
    assert "window starts at the testbed's start" in r.stderr


def test_collect_from_prometheus_starts_at_the_first_row_with_data(prom, tmp_path, monkeypatch):
    monkeypatch.setattr(_Prom, "data_from", T0 + 100.0)
    r = run("--prometheus", prom, "--since", T0, "--until", T1, "--out", tmp_path / "c", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["trimmed"] == {"asked_start": T0, "first_data": T0 + 100.0}
    assert "case starts at the first row with data" in r.stderr
    m = llmrca.load_case(tmp_path / "c").observation.metrics
    assert m["time"].iloc[0] == T0 + 100.0 and m.drop(columns="time").iloc[0].notna().all()
    r = run("--prometheus", prom, "--since", T0, "--until", T1, "--inject-time", T0 + 50, "--fault", "cpu",
            "--target", ROOT, "--out", tmp_path / "d")
    assert r.exit_code == 1 and "is not after the first row with data" in r.output
