"""`tlsearch validate | audit | run | resume | report | submit`. Exit codes: 0 success, 1 the search failed,
2 bad input (spec, paths, names, an existing run) -- always one clear message, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tlsearch import __version__
from tlsearch.errors import UserInputError

if TYPE_CHECKING:
    from tlsearch.spec import Spec

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlsearch",
        description="Distributed hyperparameter search for transfer learning on Ray.",
        epilog="Exit codes: 0 success, 1 the search failed (no trial finished), 2 bad input, "
        "130 interrupted (resume it).",
    )
    parser.add_argument("--version", action="version", version=f"tlsearch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a spec value (parsed as YAML), e.g. --set search.num_samples=4; repeatable",
    )
    address = argparse.ArgumentParser(add_help=False)
    address.add_argument(
        "--address",
        default=None,
        help="Ray cluster to attach to (default: $RAY_ADDRESS, else a new local cluster on 127.0.0.1)",
    )

    p = sub.add_parser(
        "validate", parents=[overrides], help="check spec files; exit 0 if all are valid, else 2"
    )
    p.add_argument("specs", nargs="+", metavar="SPEC")

    p = sub.add_parser(
        "audit",
        parents=[overrides],
        help="audit a spec's data; exit 0 clean, 1 warnings, 2 unusable or bad input",
        description="Check the whole data files (before data.max_*_samples): missing values, undecodable "
        "inputs, labels training never has, duplicates and near-duplicates across splits, class balance, "
        "likely label errors (docs/audit.md). Exit 0 clean, 1 warnings, 2 unusable or bad input.",
    )
    p.add_argument("spec", metavar="SPEC")
    p.add_argument(
        "--format",
        choices=["text", "json"],
        default="text",
        help="text: a summary; json: only the report's JSON on stdout (as audit.json)",
    )

    p = sub.add_parser("run", parents=[overrides, address], help="run a search from a spec")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument(
        "--name", default=None, help="search name (run directory <storage>/<name>); default: the spec's"
    )

    p = sub.add_parser(
        "submit",
        parents=[overrides],
        help="run a search as a Ray job on a cluster; exit with the job's outcome",
        description="Upload the working directory, run `python -m tlsearch run SPEC` as a Ray job, stream "
        "its logs and exit with its outcome: 0 succeeded, the driver's code when it failed (1 no trial "
        "finished, 2 bad input), 1 stopped, 130 interrupted here (the job is stopped too).",
    )
    p.add_argument("spec", metavar="SPEC", help="a spec file inside the working directory")
    p.add_argument(
        "--address",
        default=None,
        help="the cluster's job server, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)",
    )
    p.add_argument("--name", default=None, help="search name; default: the spec's")
    p.add_argument("--working-dir", default=".", help="uploaded as the job's working directory (default: .)")
    p.add_argument(
        "--python", default="python", help="the job's Python on the head node (default: python on its PATH)"
    )
    p.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="print the job id and exit 0 once it is submitted",
    )

    p = sub.add_parser("resume", parents=[address], help="continue an interrupted or killed search")
    p.add_argument("run_dir", metavar="RUN_DIR")

    p = sub.add_parser(
        "report", help="print the leaderboard of a search and write report.html / report.md from its files"
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--format",
        dest="formats",
        action="append",
        choices=["html", "md", "json"],
        default=None,
        help="which report files to write (repeatable; default: html and md)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except UserInputError as exc:
        print(f"tlsearch: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("tlsearch: interrupted; continue with `tlsearch resume RUN_DIR`", file=sys.stderr)
        return EXIT_INTERRUPTED


def _dispatch(args: argparse.Namespace) -> int:
    from tlsearch.spec import load_spec

    if args.command == "validate":
        bad = 0
        for path in args.specs:
            try:
                spec = load_spec(path, args.overrides)
            except UserInputError as exc:
                print(exc, file=sys.stderr)
                bad += 1
            else:
                print(f"{path}: ok ({spec.name}: {', '.join(spec.strategies.enabled())})")
        return EXIT_BAD_INPUT if bad else EXIT_OK

    if args.command == "audit":
        return _audit(load_spec(args.spec, args.overrides), args.format)

    if args.command == "report":
        from tlsearch.results.report import leaderboard, write_report

        run_dir = Path(args.run_dir)
        print(leaderboard(run_dir))
        report = write_report(run_dir, tuple(args.formats or ("html", "md")))
        print("\nwritten: " + ", ".join(str(path) for path in report.files.values()))
        return EXIT_OK

    if args.command == "submit":
        from tlsearch.search.submit import submit_search

        overrides = list(args.overrides) + ([f"name={args.name}"] if args.name else [])
        return submit_search(
            args.spec,
            overrides,
            address=args.address,
            working_dir=args.working_dir,
            wait=args.wait,
            python=args.python,
        )

    from tlsearch.search.runner import Outcome, resume_search, run_search

    outcome: Outcome
    if args.command == "run":
        overrides = list(args.overrides) + ([f"name={args.name}"] if args.name else [])
        outcome = run_search(load_spec(args.spec, overrides), address=args.address)
    else:
        outcome = resume_search(Path(args.run_dir), address=args.address)

    from tlsearch.results.report import leaderboard

    print()
    print(leaderboard(outcome.run_dir))
    if outcome.interrupted:
        print(
            f"tlsearch: the search stopped early; continue it with `tlsearch resume {outcome.run_dir}`",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if not outcome.succeeded:
        print(f"tlsearch: no trial finished; see the errors in {outcome.run_dir}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


AUDIT_EXIT = {"clean": EXIT_OK, "warnings": EXIT_FAILED, "unusable": EXIT_BAD_INPUT}


def _audit(spec: Spec, output: str) -> int:
    import json
    import tempfile

    from tlsearch.audit import run_audit, summary_text
    from tlsearch.data.paths import audit_files

    with tempfile.TemporaryDirectory(prefix="tlsearch-audit-") as directory:  # a builtin data set's files
        report = run_audit(spec, audit_files(spec, Path(directory)))
    print(json.dumps(report, indent=1) if output == "json" else summary_text(report))
    return AUDIT_EXIT[report["status"]]
