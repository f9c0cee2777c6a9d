"""suite_time.py times a command and keeps pytest's tally line for the README's test counts."""

from __future__ import annotations

import sys

from benchmarks._common import ROOT
from benchmarks.suite_time import timed


def test_timed_returns_exit_code_and_pytest_tally() -> None:
    lines = [
        "tests/test_cli.py ....",
        "= 387 passed, 2 deselected, 3 warnings in 1290.31s (0:21:30) =",
        "CI finished in 1322 s",
    ]
    script = f"print({chr(10).join(lines)!r}); raise SystemExit(3)"
    seconds, returncode, tally = timed([sys.executable, "-c", script], ROOT)
    assert returncode == 3
    assert tally == "387 passed, 2 deselected, 3 warnings in 1290.31s (0:21:30)"
    assert seconds > 0


def test_timed_without_a_tally_gives_an_empty_one() -> None:
    _, returncode, tally = timed([sys.executable, "-c", "print('3 passed the test')"], ROOT)
    assert (returncode, tally) == (0, "")


def test_timed_sums_each_tests_durations_from_pytests_list() -> None:
    lines = [
        "===== slowest 50 durations =====",
        "120.50s call     tests/integration/test_search.py::test_x[ddp]",
        "4.25s setup    tests/integration/test_search.py::test_x[ddp]",
        "3.00s call     tests/test_cli.py::test_y",
        "(12 durations < 0.005s hidden.)",
    ]
    script = f"print({chr(10).join(lines)!r})"
    durations: dict[str, float] = {}
    timed([sys.executable, "-c", script], ROOT, durations)
    assert durations == {
        "tests/integration/test_search.py::test_x[ddp]": 124.75,
        "tests/test_cli.py::test_y": 3.0,
    }
