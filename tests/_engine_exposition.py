"""Test helper: what an emulated engine serves on /metrics after a few ticks, the series names only."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path


def served_series(tmp_path: Path, deploy=None) -> set[str]:
    """The series names (``_bucket`` etc. included) of one emulated engine ``ray-head`` of ``deploy`` (default: the
    default deployment), after three ticks read into its exporters (the engine ticks once per second of wall
    clock)."""
    from prometheus_client import generate_latest

    from llmrca.testbed.config import TestbedConfig
    from llmrca.testbed.engine_server import Engine

    class RunDir:
        def log(self, name: str):
            return tmp_path / f"{name}.jsonl"

    async def exposition() -> str:
        cfg = TestbedConfig(seed=1) if deploy is None else TestbedConfig(deploy=deploy, seed=1)
        state = {"config": cfg.to_dict(), "replicas": ["ray-head"], "otlp_endpoint": None}
        eng = Engine("ray-head", state, RunDir())
        for _ in range(3):
            await asyncio.sleep(0.6)
            eng.rt.poll()
            eng._metrics_from_engine()
        eng.log.close()
        return generate_latest(eng.registry).decode()

    text = asyncio.run(exposition())
    return {re.split(r"[{ ]", ln, maxsplit=1)[0] for ln in text.splitlines() if ln and not ln.startswith("#")}
