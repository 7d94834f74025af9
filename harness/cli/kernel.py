"""tpbench kernel: the capability probe (which hooks this kernel offers, and why not)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import add_command


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `kernel` subcommand."""
    kernel = add_command(
        subparsers,
        "kernel",
        help="the capability probe: which hooks this kernel offers, and why not",
        epilog="examples:\n  tpbench kernel\n  tpbench kernel --json | jq '.capabilities.kprobes'",
    )
    kernel.add_argument("--json", action="store_true", help="print the probe as JSON")
    kernel.set_defaults(handler=cmd_kernel)


def cmd_kernel(args: argparse.Namespace) -> int:
    """Run `tpbench kernel`: the capability probe, as a table or as JSON."""
    from ..kernel import probe

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
