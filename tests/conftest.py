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
# (its module fixtures are built once). The modules that start processes listening on ports (a testbed, servers,
# Ray, a real vLLM) hold one lock while they run, so they run one after another whatever worker has them: a testbed
# plans its ports before it binds them, two at once could take each other's, and the fault tests measure the
# machine they share.
SERIAL = {"test_engine_parity", "test_gpu_host", "test_ray_executor", "test_testbed_e2e", "test_testbed_hang_kv",
          "test_testbed_hardening", "test_testbed_units", "test_vllm_e2e", "test_vllm_engine_units"}


@pytest.fixture(scope="module", autouse=True)
def _one_process_module_at_a_time(request, tmp_path_factory):
    import fcntl
    import os

    if Path(str(request.node.fspath)).stem not in SERIAL or "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    # the workers' base folders share this parent (pytest-of-<user>/pytest-<n>)
    with open(tmp_path_factory.getbasetemp().parent / "process-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def pytest_collection_modifyitems(config, items):
    # a module of SERIAL may first wait for the lock while another runs (a real-engine testbed: ~5 min), and
    # pytest-timeout counts that wait in its first test's set-up: such tests get 1,200 s unless they set a limit
    for item in items:
        if Path(str(item.fspath)).stem in SERIAL and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(1200))
