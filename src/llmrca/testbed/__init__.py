"""The live testbed: the simulator's deployment as real processes on 127.0.0.1 (nginx, a Serve-like proxy, vLLM-like
engines whose timing is the simulator's engine and GPU model), real Prometheus, an OTLP receiver, real fault
injectors, and a collector that writes native cases. See docs/testbed.md.

Library calls behind ``llmrca testbed``: ``control.up/status/inject/down``, ``collector.collect_case``,
``campaign.run_campaign``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TestbedConfig": "llmrca.testbed.config",
    "up": "llmrca.testbed.control",
    "down": "llmrca.testbed.control",
    "status": "llmrca.testbed.control",
    "inject": "llmrca.testbed.control",
    "running": "llmrca.testbed.control",
    "collect_case": "llmrca.testbed.collector",
    "collect_metrics": "llmrca.testbed.collector",
    "collect_prometheus_case": "llmrca.testbed.collector",
    "LabelMap": "llmrca.testbed.collector",
    "run_campaign": "llmrca.testbed.campaign",
    "Timing": "llmrca.testbed.campaign",
}

__all__ = ["LabelMap", "TestbedConfig", "Timing", "collect_case", "collect_metrics", "collect_prometheus_case",
           "down", "inject", "run_campaign", "running", "status", "up"]


def __getattr__(name: str) -> Any:  # lazy: the CLI imports this package on every command
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'llmrca.testbed' has no attribute {name!r}")
