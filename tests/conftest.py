import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# No deadlines anywhere (a slow machine must not turn a pass into a flake);
# CI is also derandomised.
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") or os.environ.get("HYPOTHESIS_PROFILE") == "ci" else "dev")

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def phi_and_data(tmp_path_factory):
    """A folder with a small random Phi (`phi/`) and the synthetic TOFU files (`data/`): what the
    run-level tests of a module start from."""
    from helpers import write_hf_phi
    from pmc_min.tiny_data import make_dataset

    root = tmp_path_factory.mktemp("phi-and-data")
    write_hf_phi(root / "phi", seed=2)
    make_dataset(root / "data")
    return root
