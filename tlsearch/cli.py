"""`tlsearch validate | audit | run | resume | report | submit | finalize | export | predict`. Exit codes:
0 success, 1 the search failed, 2 bad input (spec, paths, names, an existing run) -- always one clear
message, never a traceback."""

from __future__ import annotations

import argparse
import errno
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

    p = sub.add_parser(
        "finalize",
        help="the best configuration as the final model, evaluated once on the test split (RUN_DIR/final)",
        description="Retrain the best configuration on training + validation (or keep its weights: "
        "--no-retrain), evaluate it once on the test split, write RUN_DIR/final/ (metrics.json, "
        "misclassified.parquet, latency.json, model/), then export it to ONNX (--no-export to skip). "
        "A run is finalized once: a second finalize exits 2.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--retrain",
        dest="retrain",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="retrain on training + validation (default: the spec's finalize.retrain)",
    )
    p.add_argument(
        "--export",
        dest="export",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="export to ONNX afterwards (default: the spec's finalize.export)",
    )

    p = sub.add_parser(
        "predict",
        help="batch predictions of the final model for a file, or for the run's own split",
        description="Write `row_id`, `prediction` and `prob_<class>` per input row, as Parquet or CSV by "
        "--output's extension; onnxruntime when final/model.onnx exists, PyTorch otherwise.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="a Parquet or CSV file (or image folder) with the input column")
    source.add_argument("--split", choices=["train", "validation", "test"], help="one of the run's splits")
    p.add_argument("--output", required=True, help="the predictions file (.parquet or .csv); must not exist")

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
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        # The storage guard stops a search before its disk is full; this is a disk another process
        # filled, or one too small for even the search's own files.
        print(
            f"tlsearch: error: no space left on the device of {exc.filename or 'the storage'}: free space "
            "there, then continue with `tlsearch resume RUN_DIR` (nothing written so far is lost)",
            file=sys.stderr,
        )
        return EXIT_FAILED


def _print_memory_plan(spec: Spec) -> None:
    """What a multi-worker search's trials hold per device, DDP and sharded (built on the meta device:
    a model whose configuration cannot be read here gets a line saying so, not a failed validation)."""
    from tlsearch.train.memory_plan import plan_lines

    try:
        lines = plan_lines(spec)
    except (OSError, ValueError, RuntimeError) as exc:
        lines = [f"memory per device: not estimated here ({type(exc).__name__}: {exc})"]
    print("\n".join(lines))


def _dispatch(args: argparse.Namespace) -> int:
    from tlsearch.spec import load_spec

    if args.command == "validate":
        from tlsearch.models.files import check_model_files
        from tlsearch.search.resolve import check_data

        bad = 0
        for path in args.specs:
            try:
                spec = load_spec(path, args.overrides)
                check_data(spec)
                check_model_files(spec.model)
            except UserInputError as exc:
                print(exc, file=sys.stderr)
                bad += 1
            else:
                print(f"{path}: ok ({spec.name}: {', '.join(spec.strategies.enabled())})")
                if spec.resources.workers_per_trial > 1:
                    _print_memory_plan(spec)
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

    if args.command == "export":
        return _export(Path(args.run_dir), args.rows)

    if args.command == "finalize":
        from tlsearch.search.finalize import finalize_run

        finalize_run(Path(args.run_dir), retrain=args.retrain, export=args.export)
        return EXIT_OK

    if args.command == "predict":
        from tlsearch.search.finalize import predict_run

        written = predict_run(
            Path(args.run_dir),
            Path(args.output),
            input_file=Path(args.input) if args.input else None,
            split=args.split,
        )
        print(f"written: {written}")
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

    from tlsearch.results.report import error_line, leaderboard

    print()
    print(leaderboard(outcome.run_dir))
    if outcome.storage_full:
        print(
            f"tlsearch: stopped: {outcome.storage_full}. Free space there (or move the run directory "
            f"to a larger disk), then continue with `tlsearch resume {outcome.run_dir}`",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if outcome.interrupted:
        print(
            f"tlsearch: the search stopped early; continue it with `tlsearch resume {outcome.run_dir}`",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if outcome.budget_spent:
        print(
            f"tlsearch: search.time_budget_s ran out after {len(outcome.search_trials)} of "
            f"{outcome.num_samples} trials"
        )
    if not outcome.succeeded:
        failed = [t for t in outcome.search_trials if t["status"] == "error"]
        print(f"tlsearch: no trial finished; {len(failed)} failed:", file=sys.stderr)
        for t in failed[:10]:
            print(f"  trial {t['trial_id']}: {error_line(t.get('error'))}", file=sys.stderr)
        print(f"every error in {outcome.run_dir / 'trials.parquet'} (column `error`)", file=sys.stderr)
        return EXIT_FAILED
    if (outcome.run_dir / "final" / "metrics.json").exists():
        print(
            f"\nthe final model's test report: {outcome.run_dir / 'report.html'} (Final model), "
            f"{outcome.run_dir / 'final' / 'MODEL_CARD.md'}; predict with "
            f"`tlsearch predict {outcome.run_dir} --input FILE --output predictions.parquet`"
        )
    if outcome.finalize_error:
        print(
            f"tlsearch: the search finished, but finalize failed ({outcome.finalize_error}); try again with "
            f"`tlsearch finalize {outcome.run_dir}`",
            file=sys.stderr,
        )
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


def _export(run_dir: Path, rows: int) -> int:
    """Parity on the run's own test split, read through the spec it was started with."""
    from tlsearch.final.export import EXPORT_FILE, FINAL_DIR, ONNX_FILE
    from tlsearch.search.finalize import export_run

    report = export_run(run_dir, rows)
    final_dir = Path(run_dir).expanduser().resolve() / FINAL_DIR
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
