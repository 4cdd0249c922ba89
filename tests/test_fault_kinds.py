"""Every fault has a kind: what a diagnosing method's verdict is compared with."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from llmrca import faults
from llmrca.cli import app


def test_every_fault_has_a_kind_and_unknown_types_keep_their_name():
    kinds = faults.kinds()
    assert set(kinds) == set(faults.ids())
    assert all(isinstance(k, str) and k for k in kinds.values())
    assert kinds["cpu"] == "cpu" and faults.kind_of("engine-hang") == "engine-hang"
    assert faults.kind_of("normal") == "normal" and faults.kind_of("unknown") == "unknown"
    assert faults.kind_of("disk-full") == "disk-full"


def test_faults_cli_lists_kinds():
    r = CliRunner().invoke(app, ["faults", "--json"])
    assert r.exit_code == 0, r.output
    items = json.loads(r.output)
    assert {i["id"]: i["kind"] for i in items} == faults.kinds()
