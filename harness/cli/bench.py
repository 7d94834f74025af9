"""tpbench bench: the default suite (what `make bench` runs), by profile."""

from __future__ import annotations

import argparse
import json
import sys

from .common import add_command, add_run_options, analysed_if_interrupted, progress_display, summary


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `bench` subcommand."""
    bench = add_command(
        subparsers,
        "bench",
        help="the default suite: every workload under every backend this kernel supports",
        epilog="examples:\n  tpbench bench                      toggled overhead + fidelity trials (what `make bench` runs)\n"
        "  tpbench bench --profile quick      toggled churn only (45 s) + fidelity trials\n"
        "  tpbench bench --profile smoke      the same path at the smallest sizes (~2 min): does it all work here?\n"
        "  tpbench bench --profile thorough   every level x consumer pairing, doubled caps, 10 rounds, sweeps\n"
        "  tpbench bench --profile sweeps     the sweeps alone (where does one backend's cost cross another's?)\n"
        "writes results/<run-id>/run.json, analysis.json and benchmark.json (pytest-benchmark format:\n"
        "  pytest-benchmark compare results/*/benchmark.json)",
    )
    bench.add_argument("--profile", choices=("smoke", "quick", "default", "thorough", "sweeps"), default="default",
                       help="rounds and sweeps (default: default)")
    add_run_options(bench, trials_default=None)
    bench.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run `tpbench bench`: the profile's toggled groups and trials, then the outputs and the verdict."""
    from ..report import print_verdict, write_outputs
    from ..runner import execute
    from ..suite import PROFILES, cells, toggle_groups
    from ..record import new_run_id

    profile = PROFILES[args.profile]
    trials = args.trials or profile.trials
    suite = cells(profile)
    groups = toggle_groups(profile)
    run_id = new_run_id()
    with analysed_if_interrupted(args.out, run_id), progress_display(args.quiet) as progress:
        record = execute(suite, trials, args.out, progress=progress, strict=False, warmup=profile.warmup,
                         run_id=run_id, toggle=groups, measure_anyway=args.measure_anyway,
                         meta={"profile": profile.name, "profile_description": profile.description})
    analysis = write_outputs(record.directory, record.data)
    if args.json:
        json.dump({**summary(record), "analysis": analysis}, sys.stdout, indent=1)
        print()
    else:
        print_verdict(record.data, analysis, sys.stdout)
        print(f"\nrecord: {record.path}\nbenchmark: {record.directory / 'benchmark.json'}")
    return 0
