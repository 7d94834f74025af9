"""tpbench toggle: overhead by switching observers on and off under one running workload."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import add_command, add_measure_anyway, analysed_if_interrupted, comma_list, positive_float, positive_int, progress_display


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `toggle` subcommand."""
    toggle = add_command(
        subparsers,
        "toggle",
        help="overhead by switching observers on and off under one running workload (decided verdicts)",
        description="Prepare every observer once, run one live workload per -w, and switch the observers "
        "on and off in short windows in a random balanced order beside two no-observer arms (the "
        "baseline and its A/A twin). Stops when every headline comparison's 95% CI is at most 2 "
        "percentage points wide on each side, or at --max-s.",
        epilog="examples:\n"
        "  tpbench toggle -b tracepoint,pcap -w churn\n"
        "  tpbench toggle -b tracepoint -w churn,rr -p tracepoint.hooks=state+destroy --max-s 60\n"
        "  tpbench toggle -b pcap -w stream -p filter=full --window 0.5 --json\n"
        "toggled workloads: churn (C generator), rr, stream; toggled backends: tracepoint,\n"
        "tracepoint-empty (consumer c or mode=aggregate), pcap (consumer python)",
    )
    toggle.add_argument("-b", "--backend", type=comma_list, required=True, help="comma list of observers")
    toggle.add_argument("-w", "--workload", type=comma_list, default=["churn"],
                        help="comma list of workloads (default: churn)")
    toggle.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a parameter, repeatable or comma-separated (as for run)")
    toggle.add_argument("--window", type=positive_float, default=1.0, help="measured seconds per window (default 1)")
    toggle.add_argument("--settle", type=positive_float, default=0.2,
                        help="seconds after each switch-on left out of the measurement (default 0.2)")
    toggle.add_argument("--min-cycles", type=positive_int, default=8, help="cycles before stopping (default 8)")
    toggle.add_argument("--max-s", type=positive_float, default=120.0,
                        help="cap on each workload's windows, in seconds (default 120)")
    toggle.add_argument("--estimator", choices=("mean", "median"), default="mean",
                        help="of the per-cycle differences: mean (Student t CI) or median (sign-test CI, "
                        "for heavy-tailed noise such as stream's stalls; default mean)")
    toggle.add_argument("-o", "--out", type=Path, default=Path("results"),
                        help="folder that receives <run-id>/run.json (default ./results)")
    toggle.add_argument("--json", action="store_true", help="print the analysis as JSON on stdout")
    toggle.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    add_measure_anyway(toggle)
    toggle.set_defaults(handler=cmd_toggle)


def cmd_toggle(args: argparse.Namespace) -> int:
    """Run `tpbench toggle`: one toggled group per workload, then the outputs and verdict; 1 unless all completed."""
    from ..backends import get_backend
    from ..params import parse_assignments, split_for_plugins
    from ..record import new_run_id
    from ..report import print_verdict, write_outputs
    from ..runner import execute
    from ..toggle import Settings, plan_group
    from ..workloads import get_workload

    plugins = {name: tuple(get_workload(name).params) for name in args.workload}
    plugins.update({name: tuple(get_backend(name).params) for name in args.backend})
    routed = split_for_plugins(parse_assignments(args.param), plugins)
    settings = Settings(window_s=args.window, settle_s=args.settle, min_cycles=args.min_cycles, max_s=args.max_s,
                        estimator=args.estimator)
    groups = [plan_group(w, routed[w], [(b, routed[b]) for b in args.backend], settings) for w in args.workload]
    run_id = new_run_id()
    with analysed_if_interrupted(args.out, run_id), progress_display(args.quiet) as progress:
        record = execute([], 1, args.out, progress=progress, toggle=groups, meta={"mode": "toggle"},
                         run_id=run_id, measure_anyway=args.measure_anyway)
    analysis = write_outputs(record.directory, record.data)
    if args.json:
        json.dump({"run_id": record.data["run_id"], "run_json": str(record.path), "headline": analysis["headline"],
                   "aa": analysis["aa"], "toggle": analysis["toggle"]}, sys.stdout, indent=1)
        print()
    else:
        print_verdict(record.data, analysis, sys.stdout)
        print(f"\nrecord: {record.path}")
    failed = [e for e in record.data.get("toggle", []) if e.get("status") != "complete"]
    return 1 if failed else 0
