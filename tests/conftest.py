import sys
from pathlib import Path

# Fixture builders (rcaeval_fixtures, sim_record_fixture, _fake_methods) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))
