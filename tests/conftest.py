import sys
from pathlib import Path

import pytest

# Fixture builders (rcaeval_fixtures, sim_record_fixture, _fake_methods) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def fakes():
    """The test-only methods of ``_fake_methods`` in the registry for a module's tests (``usefixtures``)."""
    from _fake_methods import register_fakes, unregister_fakes

    register_fakes()
    yield
    unregister_fakes()


# Parallel runs (pytest-xdist, `-n auto --dist loadfile` in pyproject.toml): each module is one unit of work, so it
# runs whole on one worker and its module fixtures are built once, except the LIVE modules, which are one unit
# together (the scheduler below): they start processes listening on ports (a testbed, servers, a real vLLM), and a
# testbed plans its ports before it binds them, so two at once could take each other's. One unit runs them one
# after another on one worker while the other worker runs the rest (with only a lock per module, a worker that
# drew a live module while the other ran one sat idle: 730 s of waiting in one CI run).
# Ray (test_ray_executor) is not one of them: a local Ray picks free ports itself as it starts.
# A test that measures the machine (the real engine's inter-token latency before and during a cpu fault) asks for
# `machine_alone`: it waits until no other module runs and holds the machine until it ends (every module holds
# the machine lock shared; that test converts its module's hold to an exclusive one).
LIVE = {"test_engine_parity", "test_gpu_host", "test_testbed_e2e", "test_testbed_hang_kv",
        "test_testbed_hardening", "test_testbed_units", "test_vllm_e2e", "test_vllm_engine_units",
        "test_replica_faults_live", "test_gpu_faults_live", "test_traffic_faults_live",
        "test_fault_catalogue_live"}
_MACHINE: dict[str, object] = {}  # this worker's open machine.lock while a module runs


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile with the LIVE modules as one unit of work (xdist's own xdist_group marks do not group
    under pytest 9, which ignores the node ids xdist rewrites)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LiveTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "live" if Path(module).stem in LIVE else module

    return LiveTogether(config, log)


@pytest.fixture(scope="module", autouse=True)
def _modules_in_order(request, tmp_path_factory):
    import fcntl
    import os
    from contextlib import ExitStack

    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    module = Path(str(request.node.fspath)).stem
    shared = tmp_path_factory.getbasetemp().parent  # the workers' base folders share it (pytest-of-<user>/pytest-N)
    with ExitStack() as stack:
        # Under another --dist than loadfile the live modules could land on two workers: they still take turns.
        # Always the process lock first, then the machine lock: a waiter holds nothing the other waits for.
        if module in LIVE:
            f = stack.enter_context(open(shared / "process-tests.lock", "w"))
            fcntl.flock(f, fcntl.LOCK_EX)
        g = stack.enter_context(open(shared / "machine.lock", "w"))
        fcntl.flock(g, fcntl.LOCK_SH)
        _MACHINE["lock"] = g
        try:
            yield  # closing the files releases the locks
        finally:
            _MACHINE.pop("lock", None)


@pytest.fixture
def machine_alone():
    """The machine to this test alone: waits for the other worker's module to end, holds off its next one."""
    import fcntl

    g = _MACHINE.get("lock")
    if g is None:  # not under xdist: nothing else runs beside it
        yield
        return
    fcntl.flock(g, fcntl.LOCK_EX)  # converts this module's shared hold (not atomically: the wait is the point)
    try:
        yield
    finally:
        fcntl.flock(g, fcntl.LOCK_SH)
