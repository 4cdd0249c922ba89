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


# Parallel runs (pytest-xdist, `-n auto --dist loadfile` in pyproject.toml): each module runs whole on one worker
# (its module fixtures are built once). Two locks in the workers' shared folder order the rest:
# - SERIAL modules start processes listening on ports (a testbed, servers, Ray, a real vLLM): they run one after
#   another, since a testbed plans its ports before it binds them and two at once could take each other's;
# - ALONE modules measure the machine (the real engine's inter-token latency before and during a cpu fault): they
#   run with no other module beside them (every other module holds the machine lock shared, they hold it alone).
SERIAL = {"test_engine_parity", "test_gpu_host", "test_ray_executor", "test_testbed_e2e", "test_testbed_hang_kv",
          "test_testbed_hardening", "test_testbed_units", "test_vllm_e2e", "test_vllm_engine_units",
          "test_replica_faults_live", "test_gpu_faults_live", "test_traffic_faults_live"}
ALONE = {"test_vllm_e2e"}


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
        # always the process lock first, then the machine lock: a waiter holds nothing the other waits for
        if module in SERIAL:
            f = stack.enter_context(open(shared / "process-tests.lock", "w"))
            fcntl.flock(f, fcntl.LOCK_EX)
        g = stack.enter_context(open(shared / "machine.lock", "w"))
        fcntl.flock(g, fcntl.LOCK_EX if module in ALONE else fcntl.LOCK_SH)
        yield  # closing the files releases the locks
