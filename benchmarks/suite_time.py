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
# A line of pytest's --durations list, e.g. "212.41s call     tests/integration/test_search.py::test_x[ddp]"
DURATION = re.compile(r"^(\d+(?:\.\d+)?)s (?:setup|call|teardown)\s+(\S+)$")
# The fault tests of docs/reliability.md (issue 26's CI share), by test function.
FAULT_TESTS = (
    "test_driver_stopped_every_way_and_a_trial_killed_past_its_retries",
    "test_a_storage_that_fills_up_stops_the_search_and_resume_finishes",
    "test_a_search_whose_every_trial_failed_exits_1_and_reports_it",
    "test_two_searches_at_once_on_one_machine",
    "test_a_lost_worker_node_reschedules_its_trial_from_its_checkpoint",
    "test_a_local_clusters_dashboard_is_on_loopback_with_token_auth_and_the_rest_is_as_documented",
    "test_bad_input_gets_one_clear_message_and_exit_2",
)


def timed(command: list[str], cwd: Path, durations: dict[str, float] | None = None) -> tuple[float, int, str]:
    """Run `command`, echoing its output; its wall time, exit code and pytest's last tally line
    ("387 passed, 2 deselected in 1290.3s"; empty when it printed none). `durations` collects the
    seconds of each test pytest's --durations list names (setup, call and teardown together)."""
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
            if durations is not None and (listed := DURATION.match(line.strip())):
                test = listed.group(2)
                durations[test] = durations.get(test, 0.0) + float(listed.group(1))
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
            durations: dict[str, float] = {}
            ci_s, rc, tests = timed(["bash", ".ci/run"], clone, durations)
        faults = {
            t: round(s, 1) for t, s in durations.items() if t.split("::")[-1].split("[")[0] in FAULT_TESTS
        }
        figures = {
            "ci_s": round(ci_s, 1),
            "passed": rc == 0,
            "tests": tests,
            # Only the tests --durations lists (.ci/run: the slowest 50); those left out are faster
            # than its last.
            "fault_tests_s": round(sum(faults.values()), 1),
            "fault_tests": faults,
            "slowest": {t: round(s, 1) for t, s in sorted(durations.items(), key=lambda x: -x[1])[:15]},
        }
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
