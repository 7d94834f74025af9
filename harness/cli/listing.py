"""tpbench list: the backends, the workloads and their parameters (the module is not named list: a builtin)."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `list` subcommand."""
    listing = subparsers.add_parser("list", help="backends, workloads and their parameters")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_list)


def cmd_list(args: argparse.Namespace) -> int:
    """Run `tpbench list`: every backend and workload with its parameters, as text or JSON."""
    from ..backends import BACKENDS
    from ..workloads import WORKLOADS

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
