"""Time the test suite as `make test` runs it, split into unit and integration tests.

    .venv/bin/python benchmarks/suite_time.py

Writes benchmarks/results/suite_time.json. The README's test-suite time comes from here (plus the
set-up time that .ci/run prints on a fresh clone).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, write_result


def timed(marker: str) -> tuple[float, int]:
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", marker], cwd=ROOT)
    return time.time() - start, result.returncode


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    unit_s, unit_rc = timed("not gpu and not integration")
    integration_s, integration_rc = timed("integration and not gpu")
    figures = {
        "unit_s": round(unit_s, 1),
        "integration_s": round(integration_s, 1),
        "total_s": round(unit_s + integration_s, 1),
        "passed": unit_rc == 0 and integration_rc == 0,
    }
    print(write_result("suite_time", figures, "python benchmarks/suite_time.py"))
    print(figures)


if __name__ == "__main__":
    main()
