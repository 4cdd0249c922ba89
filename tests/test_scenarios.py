"""The one deployment config and scenario files: no field declared twice, shipped scenarios that make exactly the
suites the code used to register, --set, one-line errors naming the key, the scenario written into the suite, and
the commands (`generate`, `bench`, `scenarios`, `testbed up`) that take a scenario."""

from __future__ import annotations

import json
import tomllib
from dataclasses import fields

import pytest
from typer.testing import CliRunner

from llmrca import faults as registry
from llmrca.cli import app
from llmrca.deploy import DeployConfig
from llmrca.deploy.config import TABLES, path_of
from llmrca.errors import LlmrcaError, UnknownNameError
from llmrca.faults import Injection
from llmrca.io import load_case
from llmrca.scenarios import Scenario, ScenarioError, load, parse_value, shipped
from llmrca.sim.config import SimConfig
from llmrca.sim.deployment import deployment
from llmrca.sim.run import derive_seed
from llmrca.sim.suites import CaseSpec, fault_params, generate_suite, get_suite, plan
from llmrca.testbed.campaign import Timing
from llmrca.testbed.config import TestbedConfig

runner = CliRunner()
# Short runs on 2 replicas: enough to write real cases quickly.
QUICK = ["deployment.replicas=2", "timing.duration=60", "timing.inject_at=30", "timing.fault_duration=15",
         "timing.warmup=10", 'faults.types=["cpu"]', "reps=1"]


# -- one config ------------------------------------------------------------------------------------------------

CONFIG_CLASSES = (DeployConfig, TestbedConfig, Timing)


def test_no_field_is_declared_in_two_config_classes():
    seen: dict[str, str] = {}
    for cls in CONFIG_CLASSES:
        for f in fields(cls):
            if f.type in (DeployConfig, "DeployConfig"):
                continue  # holding the one config is not declaring its fields
            assert f.name not in seen, f"{f.name} is declared in {seen[f.name]} and {cls.__name__}"
            seen[f.name] = cls.__name__
    # A scenario holds a deploy config too and declares none of its fields.
    deploy_fields = {f.name for f in fields(DeployConfig)}
    assert not deploy_fields & {f.name for f in fields(Scenario)}


def test_sim_config_is_the_deploy_config_and_every_field_has_a_scenario_table():
    from llmrca import sim

    assert SimConfig is DeployConfig and sim.SimConfig is DeployConfig
    assert all(f.metadata["table"] in TABLES and f.metadata["doc"] for f in fields(DeployConfig))
    c = DeployConfig()
    assert (c.step, c.rate_window, c.mesh_quantiles, c.noise) == (5.0, 15.0, "istio", "realistic")
    assert TestbedConfig().deploy == c


def test_deploy_config_messages_name_the_field():
    with pytest.raises(LlmrcaError, match="rate_window"):
        DeployConfig(rate_window=7.0)
    with pytest.raises(UnknownNameError, match="mesh_quantiles"):
        DeployConfig(mesh_quantiles="bucketed")


# -- shipped scenarios make the suites that were registered in code --------------------------------------------

# What sim/suites.py registered before suites became scenario files: (faults, reps, SimConfig fields changed).
OLD_REGISTRATION = {
    "paper": (("cpu", "memory", "network", "gpu"), 10, {}),
    "demo": (("cpu", "memory", "network", "gpu"), 2, {"duration": 240.0, "inject_at": 165.0}),
}


def _old_plan(name: str, seed: int = 0, normal: int = 0) -> list[CaseSpec]:
    """The plan as the code-registered suites made it (same order, ids, configs, parameters and seeds)."""
    faults, reps, over = OLD_REGISTRATION[name]
    config = SimConfig(**over)
    width = max(2, len(str(max(reps, normal, 1) - 1)))
    topo = deployment(config).topology()
    out = []
    for f in faults:
        params = fault_params(f, config, {})
        for target in registry.get(f).target_services(topo):
            for rep in range(reps):
                out.append(CaseSpec(f"{f}/{target}/rep-{rep:0{width}d}", config, Injection(f, target, params),
                                    derive_seed(seed, f, target, rep), rep))
    for rep in range(normal):
        out.append(CaseSpec(f"normal/rep-{rep:0{width}d}", config, None, derive_seed(seed, "normal", "", rep), rep))
    return out


@pytest.mark.parametrize("name", ["paper", "demo"])
def test_shipped_scenario_plans_equal_the_old_suites(name):
    assert plan(name) == _old_plan(name)
    assert plan(name, seed=7, normal=3) == _old_plan(name, seed=7, normal=3)
    assert get_suite(name) == load(name)


def test_shipped_scenarios_load_and_round_trip_through_their_toml(tmp_path):
    assert {"paper", "demo", "live"} <= set(shipped())
    for name in shipped():
        s = load(name)
        path = tmp_path / f"{name}.toml"
        path.write_text(s.to_toml(), encoding="utf-8")
        again = load(path)
        assert again.deploy == s.deploy and again.to_document() == s.to_document()
        assert again.sha256() == s.sha256()
    live = load("live").deploy
    assert (live.step, live.rate_window) == (1.0, 5.0) and Timing.of(live) == Timing(120.0, 60.0, 60.0)
    real = load("live-vllm")
    assert (real.deploy.engine, real.deploy.model, real.deploy.replicas) == ("vllm", "llmrca/tiny-llama", 2)
    assert Timing.of(real.deploy) == Timing.of(live) and (real.deploy.step, real.deploy.rate_window) == (1.0, 5.0)
    from llmrca.testbed.injectors import live_faults

    assert set(real.faults) <= set(live_faults()) and "gpu" not in real.faults  # no GPU to cap on a CPU host


def test_integers_in_float_fields_make_the_same_config(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text('[workload]\nrate = 5\n[faults]\ntypes = ["cpu"]\n', encoding="utf-8")
    s = load(path)
    assert s.deploy == DeployConfig() and isinstance(s.deploy.rate, float) and s.name == "x"


# -- --set -----------------------------------------------------------------------------------------------------

def test_set_changes_dotted_keys_with_toml_values():
    assert parse_value("6") == 6 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("h100") == "h100" and parse_value('["cpu", "gpu"]') == ["cpu", "gpu"]
    s = load("paper", ["deployment.replicas=6", "faults.strength=0.5", "deployment.gpu=h100",
                       'faults.types=["cpu","gpu"]', "faults.network.latency_ms=300", "noise.level=none"])
    assert (s.deploy.replicas, s.deploy.gpu, s.strength, s.faults, s.deploy.noise) == (
        6, "h100", 0.5, ("cpu", "gpu"), "none")
    assert s.fault_params == {"network": {"latency_ms": 300}}
    assert plan(s) == plan("paper", overrides={"replicas": 6, "strength": 0.5, "gpu": "h100",
                                               "faults": ["cpu", "gpu"], "noise": "none",
                                               "fault_params": {"network": {"latency_ms": 300}}})
    assert len(plan(s)) == 2 * 6 * 10


def test_noise_none_is_a_top_level_shorthand_for_the_noise_level(tmp_path):
    f = tmp_path / "clean.toml"
    f.write_text('noise = "none"\n[faults]\ntypes = ["cpu"]\n')
    assert load(f).deploy.noise == "none"
    s = load("paper", ["noise.variability=false", "noise=none"])
    assert (s.deploy.noise, s.deploy.variability) == ("none", False)  # the table's other keys are kept
    with pytest.raises(ScenarioError, match="noise"):
        load("paper", ["noise=loud"])


def test_targets_limit_the_cases():
    s = load("demo", ['faults.targets=["ray-replicas-1"]'])
    assert [c.case_id for c in plan(s)] == [f"{f}/ray-replicas-1/rep-{r:02d}" for f in s.faults for r in range(2)]


# -- one-line errors naming the key ----------------------------------------------------------------------------

@pytest.mark.parametrize("sets, message", [
    (["deployment.replica=3"], (r"scenario paper.toml with --set: unknown key deployment.replica \(did you mean replicas\?\); known in "
                               r"\[deployment\]: replicas, gpu, ")),
    (["deploy.replicas=3"], r"unknown table \[deploy\] \(did you mean deployment\?\); known tables: deployment, workload"),
    (["replicas=3"], r"unknown key replicas \(it belongs in \[deployment\]\)"),
    (["deployment.replicas=four"], r"deployment.replicas must be a whole number, is 'four'"),
    (["workload.rate=true"], r"workload.rate must be a number, is True"),
    (["deployment.replicas=0"], r"deployment.replicas must be a positive number, is 0"),
    (["telemetry.rate_window=7"], r"telemetry.rate_window \(7\) must be a multiple of step"),
    (["deployment.routing=random"], r"deployment.routing must be one of least-loaded"),
    (["deployment.gpu=tpu"], r"deployment.gpu: unknown GPU"),
    (["faults.gpu.power_limit_w=90"], (r"^scenario paper.toml with --set: faults.gpu.power_limit_w = 90 W is "
                                      r"outside what an a100-80gb accepts \(100-400 W\)$")),
    (["deployment.gpu=l4", "faults.gpu.power_limit_w=150"], (r"faults.gpu.power_limit_w = 150 W is outside what "
                                                            r"an l4 accepts \(40-72 W\)")),
    (["faults.memory.size_gb=20"], (r"faults.memory.size_gb = 20 GB is more than the pod's memory limit "
                                   r"\(deployment.pod_memory_gib = 16 GiB")),
    (["faults.memory.size_gb=10", "deployment.pod_memory_gib=8"], r"faults.memory.size_gb = 10 GB is more"),
    (['faults.types=["cpu", "disk"]'], r"faults.types: unknown fault 'disk'; known: cpu"),
    (["faults.disk.size=1"], r"unknown key faults.disk: neither types, targets, strength nor a fault"),
    (["faults.gpu.watts=100"], (r"unknown key faults.gpu.watts: not a parameter of the gpu fault; known: "
                               r"power_limit_w")),
    (["faults.cpu.workers=-1"], r"faults.cpu: fault 'cpu' parameter 'workers'"),
    (['faults.targets=["nginx-proxy"]'], r"faults.targets: the cpu fault cannot target nginx-proxy"),
    (["reps=-1"], r"reps must be >= 0, is -1"),
    (["faults.strength=0"], r"faults.strength must be > 0"),
    (["deployment=3"], r"deployment must be a table"),
])
def test_bad_scenarios_give_one_line_naming_the_key(sets, message):
    with pytest.raises(ScenarioError, match=message) as e:
        load("paper", sets)
    assert "\n" not in str(e.value)


def test_unknown_scenarios_and_bad_toml(tmp_path):
    with pytest.raises(UnknownNameError, match="unknown scenario 'nope'.*shipped: demo, live, live-vllm, llm, paper"):
        load("nope")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[deployment\nreplicas = 3\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match=f"scenario {bad}: not valid TOML"):
        load(bad)
    with pytest.raises(UnknownNameError, match="unknown suite override"):
        plan("paper", overrides={"replica_count": 3})


# -- the scenario used is written into the suite ---------------------------------------------------------------

def test_suite_holds_the_scenario_it_was_made_with_and_remakes_itself(tmp_path):
    paths = generate_suite("demo", tmp_path / "a", sets=QUICK, progress=False)
    assert [p.relative_to(tmp_path / "a").as_posix() for p in paths] == ["cpu/ray-head/rep-00",
                                                                        "cpu/ray-replicas-0/rep-00"]
    manifest = json.loads((tmp_path / "a" / "suite.json").read_text())
    written = (tmp_path / "a" / "scenario.toml").read_text()
    used = load("demo", QUICK)
    assert written == used.to_toml() and manifest["scenario_sha256"] == used.sha256()
    assert manifest["scenario"]["deployment"]["replicas"] == 2 and manifest["suite"] == "demo"
    assert tomllib.loads(written)["timing"]["duration"] == 60.0
    again = generate_suite(tmp_path / "a" / "scenario.toml", tmp_path / "b", progress=False)
    for p, q in zip(paths, again):
        assert (p / "metrics.parquet").read_bytes() == (q / "metrics.parquet").read_bytes()
        assert load_case(p).truth == load_case(q).truth


# -- commands --------------------------------------------------------------------------------------------------

def test_scenarios_command_lists_and_shows():
    r = runner.invoke(app, ["scenarios", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.output)}
    assert rows["paper"]["cases"] == 160 and rows["demo"]["cases"] == 32 and rows["paper"]["reps"] == 10
    r = runner.invoke(app, ["scenarios"])
    assert r.exit_code == 0 and "paper" in r.output and "demo" in r.output
    r = runner.invoke(app, ["scenarios", "show", "paper", "--set", "deployment.replicas=6"])
    assert r.exit_code == 0, r.output
    doc = tomllib.loads(r.output)
    assert doc["deployment"]["replicas"] == 6 and doc["telemetry"]["mesh_quantiles"] == "istio"
    assert doc == _set_values(load("paper", ["deployment.replicas=6"]).to_document())  # every table and value
    r = runner.invoke(app, ["scenarios", "show", "demo", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["timing"]["inject_at"] == 165.0
    r = runner.invoke(app, ["scenarios", "show", "paper", "--set", "faults.gpu.power_limit_w=90"])
    assert r.exit_code == 1
    assert "faults.gpu.power_limit_w = 90 W is outside what an a100-80gb accepts (100-400 W)" in r.output


def _set_values(doc):
    """The document without unset (None) values, as TOML writes it."""
    return {k: _set_values(v) if isinstance(v, dict) else v for k, v in doc.items() if v is not None}


def test_generate_command_takes_a_scenario_file_and_set(tmp_path):
    src = tmp_path / "mine.toml"
    src.write_text(load("demo", QUICK).to_toml(), encoding="utf-8")
    r = runner.invoke(app, ["generate", "--scenario", str(src), "--set", "deployment.replicas=3", "--out",
                            str(tmp_path / "s"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "wrote 3 case(s)" in r.output
    assert tomllib.loads((tmp_path / "s" / "scenario.toml").read_text())["deployment"]["replicas"] == 3
    r = runner.invoke(app, ["generate", "--suite", str(src), "--set", "deployment.replica=3", "--out",
                            str(tmp_path / "t"), "--no-progress"])
    assert r.exit_code == 1 and "unknown key deployment.replica (did you mean replicas?); known in [deployment]: replicas" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_bench_command_takes_a_scenario(tmp_path):
    src = tmp_path / "mine.toml"
    src.write_text(load("demo", QUICK).to_toml(), encoding="utf-8")
    args = ["bench", "--scenario", str(src), "--methods", "dummy", "--views", "study", "--out",
            str(tmp_path / "b"), "--no-progress", "--jobs", "1"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    bench = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert bench["settings"]["scenario"] == load(src).sha256()
    src.write_text(load("demo", [*QUICK, "deployment.replicas=3"]).to_toml(), encoding="utf-8")
    r = runner.invoke(app, args)  # the same file name with other content is another suite
    assert r.exit_code == 1 and "other settings" in r.output
    r = runner.invoke(app, ["bench", "paper", "--scenario", "demo"])
    assert r.exit_code == 1 and "two scenarios given" in r.output


def test_testbed_up_builds_its_config_from_the_scenario(tmp_path, monkeypatch):
    from llmrca.testbed import control

    seen = {}

    def fake_up(cfg, run_dir, **kw):
        seen["cfg"] = cfg
        return {"ports": {"gateway": 1, "prometheus": 2}, "run_dir": str(run_dir), "replicas": ["ray-head"]}

    monkeypatch.setattr(control, "up", fake_up)
    r = runner.invoke(app, ["testbed", "up", "--run-dir", str(tmp_path), "--set", "deployment.replicas=2",
                            "--rate", "3", "--no-load"])
    assert r.exit_code == 0, r.output
    cfg = seen["cfg"]
    assert cfg.deploy == load("live", ["deployment.replicas=2", "workload.rate=3.0"]).deploy
    assert (cfg.deploy.step, cfg.deploy.rate_window, cfg.load) == (1.0, 5.0, False)
    r = runner.invoke(app, ["testbed", "up", "--run-dir", str(tmp_path), "--scenario", "paper"])
    assert r.exit_code == 0, r.output
    assert seen["cfg"].deploy == load("paper").deploy
    r = runner.invoke(app, ["testbed", "up", "--run-dir", str(tmp_path), "--set", "deployment.gpu=tpu"])
    assert r.exit_code == 1 and "deployment.gpu" in r.output


def test_every_deploy_field_has_a_settable_key():
    for f in fields(DeployConfig):
        table, key = path_of(f.name).split(".")
        assert table in TABLES
        value = getattr(DeployConfig(), f.name)
        if value is None:
            continue
        s = load("paper", {f"{table}.{key}": value})
        assert getattr(s.deploy, f.name) == getattr(load("paper").deploy, f.name)


def test_docs_list_every_scenario_key_with_its_default():
    from pathlib import Path

    from llmrca.deploy.config import default_of, table_fields
    from llmrca.scenarios.toml_text import value

    text = (Path(__file__).resolve().parents[1] / "docs" / "scenarios.md").read_text(encoding="utf-8")
    for table in TABLES:
        section = text.split(f"### [{table}]", 1)[1].split("\n### ", 1)[0]
        for key, f in table_fields(table).items():
            d = default_of(f)
            cell = "(absent)" if d is None else f"`{value(d)}`"
            assert f"| `{key}` | {cell} | {f.metadata['doc']} |" in section, (table, key)


def test_a_live_campaign_writes_the_scenario_it_runs(tmp_path):
    from llmrca.testbed.campaign import _write_manifest
    from llmrca.testbed.config import live_config

    cfg = live_config(seed=3)
    _write_manifest(tmp_path, "live", 2, ["cpu", "gpu"], ["ray-replicas-1"], Timing(100.0, 40.0, 20.0),
                    {"config": cfg.to_dict(), "scaling": None}, ["cpu/ray-replicas-1/rep-00"])
    s = load(tmp_path / "scenario.toml")
    assert (s.faults, s.targets, s.reps, s.seed) == (("cpu", "gpu"), ("ray-replicas-1",), 2, 3)
    assert Timing.of(s.deploy) == Timing(100.0, 40.0, 20.0) and s.deploy.step == 1.0
    manifest = json.loads((tmp_path / "suite.json").read_text())
    assert manifest["scenario_sha256"] == s.sha256() and manifest["timing"]["warmup"] == 30.0


def test_testbed_campaign_command_takes_its_plan_from_the_scenario(tmp_path, monkeypatch):
    from llmrca.testbed import campaign

    seen = {}
    monkeypatch.setattr(campaign, "run_campaign", lambda out_dir, **kw: seen.update(kw) or [])
    r = runner.invoke(app, ["testbed", "campaign", "--out", str(tmp_path), "--set", "reps=2",
                            "--set", 'faults.targets=["ray-replicas-0"]', "--recovery", "30"])
    assert r.exit_code == 0, r.output
    assert (seen["reps"], seen["faults"], seen["targets"]) == (2, ["cpu", "memory", "network", "gpu"],
                                                              ["ray-replicas-0"])
    assert seen["timing"] == Timing(120.0, 60.0, 30.0) and seen["config"].deploy.duration == 210.0
    r = runner.invoke(app, ["testbed", "campaign", "--out", str(tmp_path), "--suite", "paper", "--faults", "cpu"])
    assert r.exit_code == 0 and seen["faults"] == ["cpu"] and seen["suite"] == "paper"
