"""Time the test suite as `make test` runs it, split into unit and integration tests; with
--fresh-clone, time the whole CI run instead (`bash .ci/run` in a fresh clone of HEAD: venv
creation, installs and tests, as CI does).

    .venv/bin/python benchmarks/suite_time.py                # -> results/suite_time.json
    .venv/bin/python benchmarks/suite_time.py --fresh-clone  # -> results/ci_time.json

The README's test-suite and CI times come from these files.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, write_result


def timed(command: list[str], cwd: Path) -> tuple[float, int]:
    start = time.time()
    result = subprocess.run(command, cwd=cwd)
    return time.time() - start, result.returncode


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fresh-clone", action="store_true", help="run .ci/run in a fresh clone of HEAD")
    args = parser.parse_args()
    if args.fresh_clone:
        with tempfile.TemporaryDirectory(prefix="tlsearch-ci-") as tmp:
            clone = Path(tmp) / "fresh"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            ci_s, rc = timed(["bash", ".ci/run"], clone)
        figures = {"ci_s": round(ci_s, 1), "passed": rc == 0}
        print(write_result("ci_time", figures, "python benchmarks/suite_time.py --fresh-clone"))
    else:
        pytest = [sys.executable, "-m", "pytest", "-q", "-m"]
        unit_s, unit_rc = timed([*pytest, "not gpu and not integration"], ROOT)
        integration_s, integration_rc = timed([*pytest, "integration and not gpu"], ROOT)
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
