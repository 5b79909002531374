"""Keep a documented run's results.json beside its docs page, trimmed: every number the
page quotes stays, and only PMC's drawn answers (`curves.draw_samples`, the bulk of the
file; their rewards stay) are dropped.

    python tests/benchmarks/keep_results.py runs/robustness/pmc docs/runs/tiny/pmc.json
"""

import json
import sys
from pathlib import Path

source, target = Path(sys.argv[1]), Path(sys.argv[2])
results = json.loads((source / "results.json" if source.is_dir() else source).read_text())
results.get("curves", {}).pop("draw_samples", None)
target.parent.mkdir(parents=True, exist_ok=True)
target.write_text(json.dumps(results, separators=(",", ":")) + "\n")
print(f"{target}: {target.stat().st_size / 1e3:.0f} kB")
