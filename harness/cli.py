"""tpbench: the command line. Bad input gets one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import os
import statistics
import sys
from pathlib import Path
from typing import Any, NoReturn

from . import __version__, interrupts
from .errors import Interrupted, UsageError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

EPILOG = """\
examples:
  tpbench kernel                                  what this kernel lets each backend do, and why not
  tpbench run -b none -w churn -p connections=2000 --json
  tpbench run -b none -w churn -p connections=5000,concurrency=4 --trials 5
  tpbench bench                                   the default suite (what `make bench` runs)
  tpbench toggle -b tracepoint,pcap -w churn      overhead by switching observers on and off
  tpbench list                                    backends, workloads and their parameters
  tpbench cleanup                                 remove what a crashed run left behind
  tpbench vm --kernel /boot/vmlinuz-6.1.0-56-amd64 -- run -b kprobe,tracepoint -w churn
                                                  the same run on another kernel, in a VM
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) with exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _comma_list(text: str) -> list[str]:
    items = [part.strip() for part in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"empty name in {text!r}")
    return items


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tpbench",
        description="Do tracepoints beat kprobes and libpcap for observing TCP on this kernel? "
        "Runs TCP workloads between two network namespaces under each observer and records "
        "overhead, fidelity and visibility against the kernel's own counters.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tpbench {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add_run_options(sub: argparse.ArgumentParser, trials_default: int | None) -> None:
        sub.add_argument("-n", "--trials", type=_positive_int, default=trials_default,
                         help="trials per cell, interleaved across cells "
                         f"(default {trials_default if trials_default else 'from the profile'})")
        sub.add_argument("-o", "--out", type=Path, default=Path("results"),
                         help="folder that receives <run-id>/run.json (default ./results)")
        sub.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
        sub.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
        add_anyway(sub)

    def add_anyway(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--measure-anyway", action="store_true",
                         help="measure although the preflight finds another tracer or capture on the hooks, "
                         "or a busy host (every result is marked); leftovers of tpbench are refused regardless")

    run = commands.add_parser(
        "run",
        help="run workloads under backends and record the trials",
        epilog="examples:\n"
        "  tpbench run -b none -w churn -p connections=2000 --json\n"
        "  tpbench run -b none -w churn -p connections=20000,concurrency=4 -n 5 -o /tmp/results\n"
        "parameters: `-p name=value` goes to every selected workload/backend declaring `name`;\n"
        "`-p backend.name=value` to one only. `tpbench list` shows them all.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("-b", "--backend", type=_comma_list, default=["none"],
                     help="comma list of backends (default: none, the no-observer baseline)")
    run.add_argument("-w", "--workload", type=_comma_list, default=["churn"],
                     help="comma list of workloads (default: churn)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                     help="a parameter, repeatable or comma-separated")
    add_run_options(run, trials_default=1)

    toggle = commands.add_parser(
        "toggle",
        help="overhead by switching observers on and off under one running workload (decided verdicts)",
        description="Prepare every observer once, run one live workload per -w, and switch the observers "
        "on and off in short windows in a random balanced order beside two no-observer arms (the "
        "baseline and its A/A twin). Stops when every headline comparison's 95%% CI is at most 2 "
        "percentage points wide on each side, or at --max-s.",
        epilog="examples:\n"
        "  tpbench toggle -b tracepoint,pcap -w churn\n"
        "  tpbench toggle -b tracepoint -w churn,rr -p tracepoint.hooks=state+destroy --max-s 60\n"
        "  tpbench toggle -b pcap -w stream -p filter=full --window 0.5 --json\n"
        "toggled workloads: churn (C generator), rr, stream; toggled backends: tracepoint,\n"
        "tracepoint-empty (consumer c or mode=aggregate), pcap (consumer python)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    toggle.add_argument("-b", "--backend", type=_comma_list, required=True, help="comma list of observers")
    toggle.add_argument("-w", "--workload", type=_comma_list, default=["churn"],
                        help="comma list of workloads (default: churn)")
    toggle.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a parameter, repeatable or comma-separated (as for run)")
    toggle.add_argument("--window", type=_positive_float, default=1.0, help="measured seconds per window (default 1)")
    toggle.add_argument("--settle", type=_positive_float, default=0.2,
                        help="seconds after each switch-on left out of the measurement (default 0.2)")
    toggle.add_argument("--min-cycles", type=_positive_int, default=8, help="cycles before stopping (default 8)")
    toggle.add_argument("--max-s", type=_positive_float, default=120.0,
                        help="cap on each workload's windows, in seconds (default 120)")
    toggle.add_argument("--estimator", choices=("mean", "median"), default="mean",
                        help="of the per-cycle differences: mean (Student t CI) or median (sign-test CI, "
                        "for heavy-tailed noise such as stream's stalls; default mean)")
    toggle.add_argument("-o", "--out", type=Path, default=Path("results"),
                        help="folder that receives <run-id>/run.json (default ./results)")
    toggle.add_argument("--json", action="store_true", help="print the analysis as JSON on stdout")
    toggle.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    add_anyway(toggle)

    bench = commands.add_parser(
        "bench",
        help="the default suite: every workload under every backend this kernel supports",
        epilog="examples:\n  tpbench bench                      toggled overhead + fidelity trials (what `make bench` runs)\n"
        "  tpbench bench --profile quick      toggled churn only (40 s) + fidelity trials\n"
        "  tpbench bench --profile thorough   every level x consumer pairing, doubled caps, 10 rounds, sweeps\n"
        "  tpbench bench --profile sweeps     the sweeps alone (where does one backend's cost cross another's?)\n"
        "writes results/<run-id>/run.json, analysis.json and benchmark.json (pytest-benchmark format:\n"
        "  pytest-benchmark compare results/*/benchmark.json)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--profile", choices=("quick", "default", "thorough", "sweeps"), default="default",
                       help="rounds and sweeps (default: default)")
    add_run_options(bench, trials_default=None)

    report = commands.add_parser(
        "report",
        help="rebuild analysis.json, benchmark.json, report.md (+ PNG plots) and the verdict from run.json alone",
        epilog="examples:\n  tpbench report results/20261126T140512-3fa9",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("run_dir", type=Path, metavar="DIR", help="a run folder (or its run.json)")
    report.add_argument("--json", action="store_true", help="print the analysis as JSON")

    kernel = commands.add_parser(
        "kernel",
        help="the capability probe: which hooks this kernel offers, and why not",
        epilog="examples:\n  tpbench kernel\n  tpbench kernel --json | jq '.capabilities.kprobes'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kernel.add_argument("--json", action="store_true", help="print the probe as JSON")

    cleanup = commands.add_parser(
        "cleanup",
        help="remove leftovers of crashed runs (tpb-* namespaces and links, sysctls, tracefs mount)",
        epilog="examples:\n  tpbench cleanup\n  tpbench cleanup --dry-run\n  tpbench cleanup --run 20261126T140512-3fa9",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cleanup.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    cleanup.add_argument("--run", metavar="RUN_ID", help="only that run's namespaces (and this state folder's saved settings)")

    vm = commands.add_parser(
        "vm",
        help="run 'tpbench run ...' on another kernel in a virtme-ng VM; run.json comes back tagged",
        epilog="examples:\n"
        "  tpbench vm --kernel /boot/vmlinuz-6.1.0-56-amd64 -- run -b kprobe,tracepoint -w churn "
        "-p connections=200 --json\n"
        "  tpbench vm --kernel /boot/vmlinuz-6.1.0-56-amd64 --cpus 2 --memory 2G --timeout 1200 -- "
        "run -b fentry -w churn -p mode=aggregate\n"
        "The guest sees this host's filesystem read-only and runs this checkout's .venv as root.\n"
        "Without a working KVM it is emulated (TCG): ~40 s boot, ~2.5 min per bcc compile, and every\n"
        "timing it records is labelled emulated.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    vm.add_argument("--kernel", type=Path, required=True, help="kernel image (bzImage), e.g. /boot/vmlinuz-*")
    vm.add_argument("--cpus", type=_positive_int, default=2, help="guest CPUs (default 2)")
    vm.add_argument("--memory", default="2G", help="guest memory, qemu syntax (default 2G)")
    vm.add_argument("--timeout", type=_positive_int, default=1800,
                    help="seconds before the VM is killed (default 1800)")
    vm.add_argument("--kvm", choices=("auto", "on", "off"), default="auto",
                    help="auto: use KVM only if a short test boot comes back (default)")
    vm.add_argument("-o", "--out", type=Path, default=Path("results"),
                    help="folder that receives <run-id>-vm-<release>/run.json (default ./results)")
    vm.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    vm.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    vm.add_argument("run_args", nargs=argparse.REMAINDER, metavar="-- run ARGS",
                    help="the 'tpbench run' arguments for the guest, after '--'")

    compare = commands.add_parser(
        "compare",
        help="runs side by side (kernels, dates): overhead, fidelity, loss and in-kernel cost per cell",
        epilog="examples:\n  tpbench compare results/20261126T140512-3fa9 results/20261201T090000-77ab\n"
        "  tpbench compare results/vm-6.1-* results/vm-6.12-* results/host-6.18-matrix-*   (one per kernel)\n"
        "writes compare.md into the current directory (or --out)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("run_dirs", type=Path, nargs="+", metavar="DIR",
                         help="two or more run folders (or run.json files), e.g. one per kernel")
    compare.add_argument("-o", "--out", type=Path, default=Path("."), help="folder for compare.md (default .)")

    listing = commands.add_parser("list", help="backends, workloads and their parameters")
    listing.add_argument("--json", action="store_true")
    return parser


@contextlib.contextmanager
def _progress_display(quiet: bool):
    """A progress bar (cell, trial, ETA) on a terminal; finished-trial lines elsewhere; nothing with -q."""
    if quiet:
        yield None
        return
    if not sys.stderr.isatty():
        def lines(done, total, message):
            if done is None or message.startswith("["):  # skips and finished trials, not starts
                print(message, file=sys.stderr, flush=True)
        yield lines
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def update(done, total, message):
            if done is None:
                bar.console.print(message)
                return
            bar.update(task, completed=done, total=total, description=message.split("] ")[-1][:60])
        yield update


def _summary(record) -> dict[str, Any]:
    data = record.data
    return {
        "run_id": data["run_id"],
        "run_json": str(record.path),
        "status": data["status"],
        "kernel": data["kernel"]["release"],
        "headers": {"kind": data["headers"]["kind"], "package_version": data["headers"]["package_version"]},
        "cells": data["cells"],
    }


def _print_table(record) -> None:
    print(f"run {record.data['run_id']} ({record.data['status']}), kernel {record.data['kernel']['release']}")
    print(f"{'workload':<10} {'backend':<12} {'trials':>6} {'median rate':>16}  notes")
    for cell in record.data["cells"]:
        if not cell["available"]:
            print(f"{cell['workload']:<10} {cell['backend']:<12} {'-':>6} {'-':>16}  unavailable: {cell['availability']}")
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
        print(f"{cell['workload']:<10} {cell['backend']:<12} {len(ok):>6} {rate:>16}  {notes}")
    print(f"record: {record.path}")


def cmd_run(args: argparse.Namespace, workloads: list[str], backends: list[str], strict: bool) -> int:
    from .params import parse_assignments
    from .runner import execute, plan

    cells = plan(workloads, backends, parse_assignments(args.param))
    with _progress_display(args.quiet) as progress:
        record = execute(cells, args.trials, args.out, progress=progress, strict=strict,
                         measure_anyway=args.measure_anyway)
    from .report import write_outputs

    write_outputs(record.directory, record.data)  # analysis.json, benchmark.json
    if args.json:
        json.dump(_summary(record), sys.stdout, indent=1)
        print()
    else:
        _print_table(record)
    failed = sum(t["status"] != "ok" for c in record.data["cells"] for t in c["trials"])
    return 1 if failed else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .report import print_verdict, write_outputs
    from .runner import execute
    from .suite import PROFILES, cells, toggle_groups

    from .record import new_run_id
    from .report import load_run

    profile = PROFILES[args.profile]
    trials = args.trials or profile.trials
    suite = cells(profile)
    groups = toggle_groups(profile)
    run_id = new_run_id()
    try:
        with _progress_display(args.quiet) as progress:
            record = execute(suite, trials, args.out, progress=progress, strict=False, warmup=profile.warmup,
                             run_id=run_id, toggle=groups, measure_anyway=args.measure_anyway,
                             meta={"profile": profile.name,
                                                  "profile_description": profile.description})
    except Interrupted:
        saved = args.out / run_id
        if (saved / "run.json").exists():  # the finished trials are analysed all the same
            write_outputs(saved, load_run(saved))
        raise
    analysis = write_outputs(record.directory, record.data)
    if args.json:
        json.dump({**_summary(record), "analysis": analysis}, sys.stdout, indent=1)
        print()
    else:
        print_verdict(record.data, analysis, sys.stdout)
        print(f"\nrecord: {record.path}\nbenchmark: {record.directory / 'benchmark.json'}")
    return 0


def cmd_toggle(args: argparse.Namespace) -> int:
    from .backends import get_backend
    from .params import parse_assignments, split_for_plugins
    from .report import print_verdict, write_outputs
    from .runner import execute
    from .toggle import Settings, plan_group
    from .workloads import get_workload

    plugins = {name: tuple(get_workload(name).params) for name in args.workload}
    plugins.update({name: tuple(get_backend(name).params) for name in args.backend})
    routed = split_for_plugins(parse_assignments(args.param), plugins)
    settings = Settings(window_s=args.window, settle_s=args.settle, min_cycles=args.min_cycles, max_s=args.max_s,
                        estimator=args.estimator)
    groups = [plan_group(w, routed[w], [(b, routed[b]) for b in args.backend], settings) for w in args.workload]
    with _progress_display(args.quiet) as progress:
        record = execute([], 1, args.out, progress=progress, toggle=groups, meta={"mode": "toggle"},
                         measure_anyway=args.measure_anyway)
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


def cmd_report(args: argparse.Namespace) -> int:
    from .report import load_run, print_verdict, write_outputs

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


def cmd_kernel(args: argparse.Namespace) -> int:
    from .kernel import probe

    result = probe()
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=1)
        print()
        return 0
    print(f"kernel {result.release} ({result.machine})")
    for name, cap in result.capabilities.items():
        mark = "yes" if cap.available else "NO "
        print(f"  {mark}  {name:<34} {cap.reason}")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from netns import find_leftovers, remove_leftovers

    from .preflight import kill_orphan_agents
    from .system import require_root, restore_leftovers, run_lock

    require_root("tpbench cleanup")
    if args.run is not None and not re.fullmatch(r"[0-9]{8}T[0-9]{6}-[0-9a-f]{4}", args.run):
        raise UsageError(f"--run takes a run id such as 20261126T140512-3fa9, not {args.run!r}")
    if args.dry_run:
        from .preflight import leftovers

        found = leftovers() if args.run is None else [f"namespace {n}" for n in find_leftovers(args.run)["namespaces"]]
        for item in found:
            print(f"would remove {item}")
        if not found:
            print("nothing of tpbench's found")
        return 0
    with run_lock("cleanup", wait_s=5.0):  # never pull namespaces from under a live run
        done = remove_leftovers(args.run) + restore_leftovers() + kill_orphan_agents()
    for line in done:
        print(line)
    if not done:
        print("nothing of tpbench's found")
    return 0


def cmd_vm(args: argparse.Namespace) -> int:
    from .vm import run_in_vm

    run_args = args.run_args[1:] if args.run_args[:1] == ["--"] else args.run_args
    inner_json = "--json" in run_args
    run_args = [a for a in run_args if a != "--json"] + ["--json"]  # the guest always reports JSON
    summary = run_in_vm(args.kernel, run_args, args.out, args.cpus, args.memory, float(args.timeout),
                        args.kvm, (lambda _: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True)))
    if args.json or inner_json:
        json.dump(summary, sys.stdout, indent=1)
        print()
    else:
        vm = summary["vm"]
        print(f"vm run {summary['run_id']} ({summary['status']}), kernel {vm['release']}, "
              f"{'EMULATED (TCG): timings are not native' if vm['emulated'] else 'KVM'}; boot {vm['boot_s']} s")
        for check in summary["cross_check"]:
            print(f"  {check['workload']}: {' vs '.join(check['backends'])}: counts "
                  f"{'equal' if check['counts_equal'] else 'DIFFER'}; ns/event {check['ns_per_event']} "
                  f"(ratio {check['ns_per_event_ratio']}, emulated={vm['emulated']})")
        print(f"record: {summary['run_json']}")
    return summary["exit_status"]


def cmd_compare(args: argparse.Namespace) -> int:
    from .report import compare, load_run

    if len(args.run_dirs) < 2:
        raise UsageError("compare needs at least two run folders")
    runs = [(str(path), load_run(path)) for path in args.run_dirs]
    markdown, lines = compare(runs)
    target = args.out / "compare.md"
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        target.write_text(markdown)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror}") from None
    print("\n".join(lines))
    print(f"\ncompare: {target}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .backends import BACKENDS
    from .workloads import WORKLOADS

    if args.json:
        data = {
            kind: {
                p.name: {"description": p.description, "params": {q.name: q.describe() for q in p.params}}
                for p in plugins.values()
            }
            for kind, plugins in (("backends", BACKENDS), ("workloads", WORKLOADS))
        }
        json.dump(data, sys.stdout, indent=1)
        print()
        return 0
    for kind, plugins in (("backends", BACKENDS), ("workloads", WORKLOADS)):
        print(f"{kind}:")
        for plugin in plugins.values():
            print(f"  {plugin.name:<12} {plugin.description}")
            for param in plugin.params:
                print(f"      -p {param.describe()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    interrupts.install()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        if args.command == "run":
            return cmd_run(args, args.workload, args.backend, strict=True)
        if args.command == "bench":
            return cmd_bench(args)
        if args.command == "toggle":
            return cmd_toggle(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "kernel":
            return cmd_kernel(args)
        if args.command == "cleanup":
            return cmd_cleanup(args)
        if args.command == "list":
            return cmd_list(args)
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "vm":
            return cmd_vm(args)
        raise UsageError(f"unknown command {args.command!r}")
    except UsageError as exc:
        print(f"tpbench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as exc:
        print(f"tpbench: interrupted by {exc.signal_name}; finished trials are kept in run.json",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 1
    except Exception as exc:  # a bug or an environment fault: one line, the traceback on request
        if os.environ.get("TPBENCH_DEBUG"):
            raise
        print(f"tpbench: internal error: {type(exc).__name__}: {exc} (TPBENCH_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
