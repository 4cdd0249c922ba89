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
