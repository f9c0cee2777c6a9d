"""`tlsearch validate | run | resume | report | submit | export`. Exit codes: 0 success, 1 the search failed,
2 bad input (spec, paths, names, an existing run) -- always one clear message, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tlsearch import __version__
from tlsearch.errors import UserInputError

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

    p = sub.add_parser(
        "export",
        help="export the final model (RUN_DIR/final/model) to final/model.onnx, with a parity check",
        description="Write final/model.onnx and final/export.json: the ONNX graph's inputs and outputs, "
        "its parity with PyTorch in onnxruntime on the run's test rows, and both runtimes' latency. "
        "Exit 1 when parity fails (max |logit difference| > 1e-4 or a top class differs).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="the export format (default: onnx)")
    p.add_argument(
        "--rows",
        type=int,
        default=256,
        help="test rows the parity check runs on (a class-stratified subset; default: 256)",
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

    if args.command == "report":
        from tlsearch.results.report import leaderboard, write_report

        run_dir = Path(args.run_dir)
        print(leaderboard(run_dir))
        report = write_report(run_dir, tuple(args.formats or ("html", "md")))
        print("\nwritten: " + ", ".join(str(path) for path in report.files.values()))
        return EXIT_OK

    if args.command == "export":
        return _export(Path(args.run_dir), args.rows)

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


def _export(run_dir: Path, rows: int) -> int:
    """Parity on the run's own test split, read through the spec it was started with."""
    from tlsearch.data.datasets import load_split
    from tlsearch.data.tables import stratified_subset
    from tlsearch.final.export import EXPORT_FILE, ONNX_FILE, check_exportable, export_final
    from tlsearch.search.resolve import read_resolved_spec, resolve_data

    spec = read_resolved_spec(run_dir)
    final_dir = check_exportable(run_dir)  # refuse before reading any data
    files, _ = resolve_data(spec, run_dir, reuse=True)
    if files.test is None:
        raise UserInputError(f"{run_dir}'s data has no test split: the ONNX parity check runs on test rows")
    test = load_split(files, "test")
    true_labels = [files.labels[t] for t in test.targets]
    keep = stratified_subset(true_labels, max(1, rows))
    report = export_final(
        run_dir, [test.inputs[i] for i in keep], [true_labels[i] for i in keep], test.base_dir
    )
    latency = report["latency"]
    print(
        f"{final_dir / ONNX_FILE}: opset {report['opset']}, parity on {report['parity']['rows']} test rows: "
        f"max |logit difference| {report['max_abs_diff']:.2e}, top-class agreement "
        f"{report['argmax_agreement']}\n"
        f"latency per example, batch 1 (p50): pytorch {latency['pytorch']['batch1_p50_ms']:.2f} ms "
        f"({latency['pytorch']['device']}), onnxruntime {latency['onnxruntime']['batch1_p50_ms']:.2f} ms\n"
        f"written: {final_dir / ONNX_FILE}, {final_dir / EXPORT_FILE}"
    )
    if not report["parity_holds"]:
        print(
            f"tlsearch: the ONNX graph's logits differ from PyTorch's beyond 1e-4 or in a top class; "
            f"see {final_dir / EXPORT_FILE}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK
