import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

# No deadlines anywhere (a slow machine must not turn a pass into a flake);
# CI is also derandomised.
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") or os.environ.get("HYPOTHESIS_PROFILE") == "ci" else "dev")

sys.path.insert(0, str(Path(__file__).parent))
