"""tpbench run: workloads under backends, trials recorded in run.json."""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from ..record import BASELINE
from .common import add_command, add_run_options, comma_list, progress_display, setting_list, summary


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `run` subcommand."""
    run = add_command(
        subparsers,
        "run",
        help="run workloads under backends and record the trials",
        epilog="examples:\n"
        "  tpbench run -b none -w churn -p connections=2000 --json\n"
        "  tpbench run -b none -w churn -p connections=20000,concurrency=4 -n 5 -o /tmp/results\n"
        "  tpbench run -b 'tracepoint[flavour=tp],tracepoint[flavour=raw_tp],tracepoint[flavour=tp_btf]' \\\n"
        "      -w churn -p connections=2000,mode=aggregate     one backend in three settings, side by side\n"
        "  tpbench run -b kprobe,fentry,tracepoint --record-unavailable -w churn   the same line on any kernel\n"
        "parameters: `-p name=value` goes to every selected workload/backend declaring `name`;\n"
        "`-p backend.name=value` to one only; `-b 'backend[name=value,...]'` to that setting only\n"
        "(quote the brackets from the shell). `tpbench list` shows them all.",
    )
    run.add_argument("-b", "--backend", type=setting_list, default=[BASELINE],
                     help="comma list of backends, each optionally with its own parameters as "
                          "name[param=value,...] (default: none, the no-observer baseline)")
    run.add_argument("-w", "--workload", type=comma_list, default=["churn"],
                     help="comma list of workloads (default: churn)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                     help="a parameter, repeatable or comma-separated")
    run.add_argument("--record-unavailable", action="store_true",
                     help="record a backend this kernel cannot run as unavailable, with the probe's reason, "
                          "instead of refusing the run (one command line for a kernel matrix)")
    add_run_options(run, trials_default=1)
    run.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Run `tpbench run` (strict: a backend this kernel cannot run is an error, unless
    --record-unavailable records it as such)."""
    return cmd_run(args, args.workload, args.backend, strict=not args.record_unavailable)


def cmd_run(args: argparse.Namespace, workloads: list[str], backends: list[str], strict: bool) -> int:
    """The cells of `workloads` x `backends`, run and written out, then a table or JSON; 1 if any trial failed."""
    from ..params import parse_assignments
    from ..runner import execute, plan

    cells = plan(workloads, backends, parse_assignments(args.param))
    with progress_display(args.quiet) as progress:
        record = execute(cells, args.trials, args.out, progress=progress, strict=strict,
                         measure_anyway=args.measure_anyway)
    from ..report import write_outputs

    write_outputs(record.directory, record.data)  # analysis.json, benchmark.json
    if args.json:
        json.dump(summary(record), sys.stdout, indent=1)
        print()
    else:
        print_table(record)
    failed = sum(t["status"] != "ok" for c in record.data["cells"] for t in c["trials"])
    return 1 if failed else 0


def print_table(record) -> None:
    """Per cell: ok trials, median operation rate and notes (failures, losses); then the record's path."""
    print(f"run {record.data['run_id']} ({record.data['status']}), kernel {record.data['kernel']['release']}")
    width = max([12, *(len(c.get("setting", c["backend"])) for c in record.data["cells"])])
    print(f"{'workload':<10} {'backend':<{width}} {'trials':>6} {'median rate':>16}  notes")
    for cell in record.data["cells"]:
        if not cell["available"]:
            print(f"{cell['workload']:<10} {cell.get('setting', cell['backend']):<{width}} {'-':>6} {'-':>16}  "
                  f"unavailable: {cell['availability']}")
            continue
        ok = [t for t in cell["trials"] if t["status"] == "ok"]
        failed = len(cell["trials"]) - len(ok)
        rate = f"{statistics.median(t['operation_rate'] for t in ok):,.0f}/s" if ok else "-"
        notes = f"{failed} failed" if failed else ""
        lost = [t["observed"]["lost"] for t in ok]
        if any(n is None for n in lost):
            notes += " loss not countable on this kernel (see loss_method)"
        elif sum(lost):
            notes += f" {sum(lost)} events lost"
        print(f"{cell['workload']:<10} {cell.get('setting', cell['backend']):<{width}} {len(ok):>6} {rate:>16}  {notes}")
    print(f"record: {record.path}")
