"""Time the test suite as `make test` runs it, split into unit and integration tests; with
--fresh-clone, time the whole CI run instead (`bash .ci/run` in a fresh clone of HEAD: venv
creation, installs and tests, as CI does).

    .venv/bin/python benchmarks/suite_time.py                # -> results/suite_time.json
    .venv/bin/python benchmarks/suite_time.py --fresh-clone  # -> results/ci_time.json

The README's test-suite and CI times come from these files.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, write_result

# pytest's closing line, e.g. "==== 387 passed, 2 deselected, 3 warnings in 1290.31s (0:21:30) ===="
PYTEST_TALLY = re.compile(r"\d+ (passed|failed|error)s?\b.* in \d+(\.\d+)?s")


def timed(command: list[str], cwd: Path) -> tuple[float, int, str]:
    """Run `command`, echoing its output; its wall time, exit code and pytest's last tally line
    ("387 passed, 2 deselected in 1290.3s"; empty when it printed none)."""
    start = time.time()
    tally = ""
    with subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            if PYTEST_TALLY.search(line):
                tally = line.strip().strip("= ")
    return time.time() - start, process.returncode, tally


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
            ci_s, rc, tests = timed(["bash", ".ci/run"], clone)
        figures = {"ci_s": round(ci_s, 1), "passed": rc == 0, "tests": tests}
        print(write_result("ci_time", figures, "python benchmarks/suite_time.py --fresh-clone"))
    else:
        pytest = [sys.executable, "-m", "pytest", "-q", "-m"]
        unit_s, unit_rc, unit_tests = timed([*pytest, "not gpu and not integration"], ROOT)
        integration_s, integration_rc, integration_tests = timed([*pytest, "integration and not gpu"], ROOT)
        figures = {
            "unit_s": round(unit_s, 1),
            "integration_s": round(integration_s, 1),
            "unit_tests": unit_tests,
            "integration_tests": integration_tests,
            "total_s": round(unit_s + integration_s, 1),
            "passed": unit_rc == 0 and integration_rc == 0,
        }
        print(write_result("suite_time", figures, "python benchmarks/suite_time.py"))
    print(figures)


if __name__ == "__main__":
    main()
