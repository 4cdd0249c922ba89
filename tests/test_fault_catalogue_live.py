"""The LLM fault catalogue on one whole live testbed (emulated engine, 3 replicas, a workload node): a prompt surge
shows in the client's and the replicas' series, a network loss gives the target's calls a retransmission tail, a
crash loop restarts the target each time, and every new fault that the emulated engine supports, held by a
`testbed inject` CLI that is then killed with SIGKILL, is undone at once: every control it touched (the engines',
the proxy's, the load generator's, the mesh's) is back to what it was before, and every process runs.

One testbed for the module (its start and stop are a third of each whole-testbed test). Every wait is on an event.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest
from _live import rows, tree, wait
from _live import src_env as _env

pytest.importorskip("aiohttp", reason="the testbed extra is not installed (pip install -e '.[testbed]')")

from llmrca.testbed.nginx import nginx_binary
from llmrca.testbed.prometheus import prometheus_binary
from llmrca.testbed.rundir import RunDir

pytestmark = pytest.mark.skipif(
    prometheus_binary() is None or nginx_binary() is None or os.environ.get("LLMRCA_SKIP_TESTBED") == "1",
    reason="the live testbed needs the Debian packages prometheus and nginx (apt-get install -y prometheus nginx "
           "stress-ng); LLMRCA_SKIP_TESTBED=1 skips it",
)

HEAD, HOT, OTHER, LAST = "ray-head", "ray-replicas-0", "ray-replicas-1", "ray-replicas-1"


@pytest.fixture(scope="module")
def tb(tmp_path_factory):
    from llmrca.deploy import DeployConfig
    from llmrca.testbed import control
    from llmrca.testbed.config import TestbedConfig

    run_dir = tmp_path_factory.mktemp("catalogue") / "tb"
    cfg = TestbedConfig(deploy=DeployConfig(replicas=3, rate=3.0, prompt_tokens=64, output_tokens=16, step=1.0,
                                            rate_window=5.0, workload_node=True), model_load_s=2.0, seed=3)
    started: list[psutil.Process] = []
    try:
        st = control.up(cfg, run_dir, detach=False, timeout=300)
        started = tree(st["supervisor"]["pid"])
        yield {"run_dir": run_dir, "state": st}
        started += tree(st["supervisor"]["pid"])
    finally:
        if (run_dir / "state.json").exists():
            report = control.down(run_dir)
            assert report["open_ports"] == [] and report["killed_leftovers"] == []
    assert [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []


def _get(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.mark.timeout(600)
def test_a_surge_at_the_workload_node_shows_in_the_clients_and_the_replicas_series(tb):
    from llmrca.testbed import control
    from llmrca.testbed.collector import collect_case

    run_dir = tb["run_dir"]
    cols = ["loadgen_prompt_tokens_sent", "loadgen_requests_sent", f"{HOT}_prompt_tokens"]
    t0 = time.time()
    assert wait(lambda: rows(run_dir, t0, cols) >= 15, 300, every=2.0), "no client series scraped"
    rec = control.inject("prompt-surge", "loadgen", 15.0, run_dir=run_dir)
    assert rec["status"] == "done" and rec["params"] == {"factor": 8.0, "share": 1.0}
    after = time.time()
    assert wait(lambda: rows(run_dir, after, cols) >= 6, 120, every=2.0)
    case = collect_case(run_dir, t0, time.time(), traces=False, logs=False)
    assert case.truth.service == "loadgen" and ("loadgen", "nginx-proxy") in case.observation.topology.edges
    m = case.observation.metrics
    t = m["time"]
    before = t < rec["inject_time"]
    during = (t > rec["inject_time"] + 6) & (t < rec["undone_at"])
    sent = m["loadgen_prompt_tokens_sent"]
    assert sent[during].median() > 4 * sent[before].median()
    assert m[f"{HOT}_prompt_tokens"][during].median() > 3 * m[f"{HOT}_prompt_tokens"][before].median()


@pytest.mark.timeout(600)
def test_network_loss_gives_the_targets_calls_a_retransmission_tail(tb):
    from llmrca.testbed import control
    from llmrca.testbed.collector import collect_case

    run_dir = tb["run_dir"]
    rec = control.inject("network-loss", HOT, 60.0, {"loss_pct": 50.0, "correlation": 0.0}, run_dir=run_dir)
    assert rec["status"] == "done" and rec["params"] == {"loss": 0.5, "correlation": 0.0}
    assert "TCP recovery emulated" in rec["method"]
    (link,) = rec["notes"]["mesh_loss"]
    assert link["segments_sent"] > 20 and 0.3 < link["segments_dropped"] / link["segments_sent"] < 0.7
    time.sleep(3.0)  # the last spans are exported
    case = collect_case(run_dir, rec["inject_time"] + 2.0, float(rec["undone_at"]), case_id="loss", logs=False,
                        injection_id=rec["id"])
    spans = case.observation.traces
    calls = spans[spans["operation"] == "process_request"]
    child = spans[spans["operation"] == "llm_request"][["parent_span_id", "service"]]
    calls = calls.merge(child, left_on="span_id", right_on="parent_span_id", suffixes=("", "_replica"))
    dur = {r: calls[calls["service_replica"] == r]["duration_us"] / 1e6 for r in (HOT, OTHER)}
    assert len(dur[HOT]) >= 5 and len(dur[OTHER]) >= 5
    # A third to a half of the calls to the target wait for the retransmission timer (0.32 and 0.44 of 16-19
    # calls in two 30 s runs), none of its peer's: a wait adds 0.13-0.6 s (the timer partly overlaps the engine's
    # own time) and the peer's calls end within 0.03 s above their median, so 0.1 s above it tells them apart.
    # 60 s of fault give ~35 calls, and fewer than 4 waits among them has probability 2e-3 at a wait rate of 0.3,
    # 3e-4 at 0.35 (binomial); 20 s and a bar of 0.2 above 0.18 s failed one CI run (3 of 15 calls).
    assert dur[HOT].quantile(0.9) > dur[OTHER].quantile(0.9) + 0.15, (dur[HOT].describe(), dur[OTHER].describe())
    slow = {r: (dur[r] > dur[OTHER].median() + 0.1).mean() for r in (HOT, OTHER)}
    assert slow[HOT] > slow[OTHER] + 0.1, (slow, dur[HOT].tolist(), dur[OTHER].tolist())


@pytest.mark.timeout(600)
def test_a_crash_loop_restarts_the_target_each_time(tb):
    from llmrca.testbed import control

    run_dir = tb["run_dir"]
    before = control.status(run_dir)["processes"][f"engine:{HOT}"]["restarts"]
    p = {"crashes": 3, "uptime_s": 3.0, "load_s": 2.0, "backoff_s": 1.0}
    # kills at 0, 5 and 11 s (down 2, 3 and 4 s); the fault lasts until the loop is through
    rec = control.inject("replica-crash-loop", HOT, 17.0, p, run_dir=run_dir)
    assert rec["status"] == "done" and len(rec["params"]["sequence"]) == 3
    assert [k["backoff_s"] for k in rec["notes"]["kills"]] == [1.0, 2.0] and not rec["notes"].get("later_errors")
    st = control.status(run_dir)
    assert st["processes"][f"engine:{HOT}"]["running"]
    assert st["processes"][f"engine:{HOT}"]["restarts"] - before == 3
    text = RunDir(run_dir).log("controller").read_text(encoding="utf-8")
    assert text.count(f"Replica {HOT} of deployment VLLMDeployment died unexpectedly") == 3


# -- a CLI holding each new fault, killed: the supervisor undoes it, every control is as before -----------------
def _controls(st: dict) -> dict:
    """What the faults change, read from the running processes: each engine's /control (or "down"), the proxy's
    and the load generator's controls, the mesh's link faults, and which processes run."""
    from llmrca.testbed import control

    ports = st["ports"]
    out: dict = {}
    for r in st["replicas"]:
        try:
            c = _get(f"http://127.0.0.1:{ports['engine:' + r]}/control")
        except (urllib.error.URLError, OSError, ValueError):
            out[r] = "down"
            continue
        c.pop("requests", None)  # the load's count, not a control
        c.pop("cpu_share", None)  # the CPU the engine got (moves with the machine's load), not a control
        out[r] = c
    out["proxy"] = _get(f"http://127.0.0.1:{ports['proxy']}/control")
    out["loadgen"] = _get(f"http://127.0.0.1:{ports['loadgen']}/control")
    out["links"] = {x["name"]: (x["delay_up"], x["delay_down"], x["loss_up"], x["loss_down"])
                    for x in _get(f"http://127.0.0.1:{ports['mesh']}/links")}
    out["running"] = {k: p["running"] for k, p in control.status(st["run_dir"])["processes"].items()}
    return out


def _flat(c: dict) -> dict:
    """The controls as (part, key) -> value; an engine that does not answer is (replica, "*") -> "down"."""
    out = {}
    for part, v in c.items():
        if isinstance(v, dict):
            out.update({(part, k): x for k, x in v.items()})
        else:
            out[(part, "*")] = v
    return out


def _diff(a: dict, b: dict, keys=None) -> dict:
    """(part, key) -> (a's value, b's value) where they differ (among ``keys`` when given); a control of another
    fault that expires on its own meanwhile is no footprint of this one."""
    keys = set(a) | set(b) if keys is None else set(keys)
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


# (fault, target, parameters): model loads of a second, so that each restart an undo makes is quick
NEW_FAULTS = [("gpu-xid", LAST, ["load_s=1"]), ("gpu-ecc", LAST, ["load_s=1"]), ("gpu-thermal", LAST, []),
              ("kv-cache-pressure", LAST, ["load_s=1"]), ("engine-hang", LAST, []),
              ("replica-crash-loop", LAST, ["load_s=1", "uptime_s=2", "backoff_s=1"]), ("straggler", LAST, []),
              ("network-loss", LAST, []), ("prompt-surge", "loadgen", []), ("proxy-overload", HEAD, []),
              ("routing-skew", HEAD, [])]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("fault", "target", "params"), NEW_FAULTS, ids=[f for f, _, _ in NEW_FAULTS])
def test_a_killed_cli_leaves_no_trace_of_its_fault(tb, fault, target, params):
    from llmrca.testbed import control

    run_dir, st = tb["run_dir"], tb["state"]
    st = {**st, "run_dir": str(run_dir)}
    # every process runs and every engine answers before (an earlier fault's restart is through)
    def serving() -> bool:
        try:
            c = _controls(st)
        except (urllib.error.URLError, OSError, ValueError):  # the load generator's control opens after `up`
            return False
        return "down" not in c.values() and all(c["running"].values())

    assert wait(serving, 60, 0.5), _controls(st)
    before = _flat(_controls(st))
    env = {**_env(), "LLMRCA_TESTBED_DIR": str(run_dir)}
    cli = subprocess.Popen([sys.executable, "-m", "llmrca.cli", "testbed", "inject", fault, "--target", target,
                            "--duration", "120", *[a for p in params for a in ("--param", p)]],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait(lambda: control.status(run_dir)["injections"] or cli.poll() is not None, 60), \
            f"{fault}: the fault never became active"
        assert cli.poll() is None, cli.stderr.read().decode()[-2000:] if cli.stderr else ""
        # the fault is there: some control differs from before; what differs is the fault's footprint
        footprint: set = set()

        def changed() -> bool:
            footprint.update(_diff(before, _flat(_controls(st))))
            return bool(footprint)

        assert wait(changed, 30, 0.3), f"{fault}: active, but no control changed"
        cli.send_signal(signal.SIGKILL)
        cli.wait(timeout=10)
        assert wait(lambda: not control.status(run_dir)["injections"], 60), f"{fault}: the fault outlived its CLI"

        def restored() -> bool:
            now = _flat(_controls(st))
            footprint.update(k for k in _diff(before, now) if k[0] == "running" or k[1] == "*")
            return not _diff(before, now, footprint)

        assert wait(restored, 90, 0.5), (fault, _diff(before, _flat(_controls(st)), footprint))
        # and stays so: an engine a GPU fault killed exits a moment after its fault, which the undo may precede
        time.sleep(1.0)
        assert wait(restored, 90, 0.5), (fault, _diff(before, _flat(_controls(st)), footprint))
    finally:
        if cli.poll() is None:
            cli.kill()
        cli.wait(timeout=10)
    recs = [json.loads(x) for x in (run_dir / "injections.jsonl").read_text().splitlines() if x.strip()]
    last = [r for r in recs if r.get("fault") == fault][-1]
    assert last["status"] == "done" and last["undo_reason"] == "the client went away", last
