"""tpbench report: rebuild analysis.json, benchmark.json, report.md and the verdict from run.json alone."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import UsageError
from .common import add_command


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `report` subcommand."""
    report = add_command(
        subparsers,
        "report",
        help="rebuild analysis.json, benchmark.json, report.md (+ PNG plots) and the verdict from run.json alone",
        epilog="examples:\n  tpbench report results/20261126T140512-3fa9",
    )
    report.add_argument("run_dir", type=Path, metavar="DIR", help="a run folder (or its run.json)")
    report.add_argument("--json", action="store_true", help="print the analysis as JSON")
    report.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Run `tpbench report`: rebuild a run folder's outputs from run.json, then the verdict (or JSON)."""
    from ..report import load_run, print_verdict, write_outputs

    run = load_run(args.run_dir)
    directory = args.run_dir if args.run_dir.is_dir() else args.run_dir.parent
    try:
        analysis = write_outputs(directory, run)
    except OSError as exc:
        raise UsageError(f"cannot write into {directory}: {exc.strerror}") from None
    if args.json:
        json.dump(analysis, sys.stdout, indent=1)
        print()
    else:
        print_verdict(run, analysis, sys.stdout)
    return 0
