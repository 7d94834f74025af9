"""tpbench cleanup: remove what crashed runs left behind (namespaces, links, sysctls, tracefs, agents)."""

from __future__ import annotations

import argparse
import re

from ..errors import UsageError
from .common import add_command


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `cleanup` subcommand."""
    cleanup = add_command(
        subparsers,
        "cleanup",
        help="remove leftovers of crashed runs (tpb-* namespaces and links, sysctls, tracefs mount)",
        epilog="examples:\n  tpbench cleanup\n  tpbench cleanup --dry-run\n  tpbench cleanup --run 20261126T140512-3fa9",
    )
    cleanup.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    cleanup.add_argument("--run", metavar="RUN_ID", help="only that run's namespaces (and this state folder's saved settings)")
    cleanup.set_defaults(handler=cmd_cleanup)


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Run `tpbench cleanup`: remove (with --dry-run, list) what crashed runs left behind; needs root."""
    from netns import find_leftovers, remove_leftovers

    from ..preflight import kill_orphan_agents
    from ..system import require_root, restore_leftovers, run_lock

    require_root("tpbench cleanup")
    if args.run is not None and not re.fullmatch(r"[0-9]{8}T[0-9]{6}-[0-9a-f]{4}", args.run):
        raise UsageError(f"--run takes a run id such as 20261126T140512-3fa9, not {args.run!r}")
    if args.dry_run:
        from ..preflight import leftovers

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
