"""Scenario files: a deployment, its workload, noise, timing, faults, targets, repetitions and seed as one TOML
file. ``paper`` (the reference study), ``demo`` (a quick version of it) and ``live`` (the study's deployment with the
live testbed's 1 s scrapes and compressed timing) ship in this package. See docs/scenarios.md."""

from llmrca.scenarios.scenario import Scenario, ScenarioError, load, parse_value, shipped

__all__ = ["Scenario", "ScenarioError", "load", "parse_value", "shipped"]
