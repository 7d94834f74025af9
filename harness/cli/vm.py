"""tpbench vm: 'tpbench run ...' on another kernel in a virtme-ng VM; its run.json comes back tagged."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import add_command, positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `vm` subcommand."""
    vm = add_command(
        subparsers,
        "vm",
        help="run 'tpbench run ...' on another kernel in a virtme-ng VM; run.json comes back tagged",
        epilog="examples:\n"
        "  tpbench vm --kernel \"$(ls /boot/vmlinuz-6.1.*-amd64 | tail -1)\" -- run -b kprobe,tracepoint -w churn "
        "-p connections=200 --json\n"
        "  tpbench vm --kernel \"$(ls /boot/vmlinuz-6.1.*-amd64 | tail -1)\" --cpus 2 --memory 2G --timeout 1200 -- "
        "run -b fentry -w churn -p mode=aggregate\n"
        "The guest sees this host's filesystem read-only and runs this checkout's .venv as root.\n"
        "Without a working KVM it is emulated (TCG): ~40 s boot, ~2.5 min per bcc compile, and every\n"
        "timing it records is labelled emulated.",
    )
    vm.add_argument("--kernel", type=Path, required=True, help="kernel image (bzImage), e.g. /boot/vmlinuz-*")
    vm.add_argument("--cpus", type=positive_int, default=2, help="guest CPUs (default 2)")
    vm.add_argument("--memory", default="2G", help="guest memory, qemu syntax (default 2G)")
    vm.add_argument("--timeout", type=positive_int, default=1800,
                    help="seconds before the VM is killed (default 1800)")
    vm.add_argument("--kvm", choices=("auto", "on", "off"), default="auto",
                    help="auto: use KVM only if a short test boot comes back (default)")
    vm.add_argument("-o", "--out", type=Path, default=Path("results"),
                    help="folder that receives <run-id>-vm-<release>/run.json (default ./results)")
    vm.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    vm.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    vm.add_argument("run_args", nargs=argparse.REMAINDER, metavar="-- run ARGS",
                    help="the 'tpbench run' arguments for the guest, after '--'")
    vm.set_defaults(handler=cmd_vm)


def cmd_vm(args: argparse.Namespace) -> int:
    """Run `tpbench vm`: `tpbench run ...` in a VM on --kernel, then its summary; the VM run's exit status."""
    from ..vm import run_in_vm

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
                  f"{'equal' if check['counts_equal'] else 'differ, within the counted loss' if check.get('within_counted_loss') else 'DIFFER'}; "
                  f"ns/event {check['ns_per_event']} "
                  f"(ratio {check['ns_per_event_ratio']}, emulated={vm['emulated']})")
        print(f"record: {summary['run_json']}")
    return summary["exit_status"]
