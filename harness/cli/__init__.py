"""tpbench: the command line. Bad input gets one line on stderr and exit status 2, never a traceback.

One module per subcommand holds its options (`add_parser`) and its handler (`cmd_<name>`, set as the
parser's `handler` default); common.py holds what they share (argument types, the run options,
progress display). This module builds the top-level parser and turns exceptions into exit statuses.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__, interrupts
from ..errors import Interrupted, UsageError
from . import bench, cleanup, compare, kernel, listing, report, run, toggle, vm
from .common import Parser

__all__ = ["EXIT_INTERRUPTED", "EXIT_USAGE", "build_parser", "main"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# in the order `tpbench --help` lists them
COMMANDS = (run, toggle, bench, report, kernel, cleanup, vm, compare, listing)

EPILOG = """\
examples:
  tpbench kernel                                  what this kernel lets each backend do, and why not
  tpbench run -b none -w churn -p connections=2000 --json
  tpbench run -b none -w churn -p connections=5000,concurrency=4 --trials 5
  tpbench bench                                   the default suite (what `make bench` runs)
  tpbench toggle -b tracepoint,pcap -w churn      overhead by switching observers on and off
  tpbench list                                    backends, workloads and their parameters
  tpbench cleanup                                 remove what a crashed run left behind
  tpbench vm --kernel "$(ls /boot/vmlinuz-6.1.*-amd64 | tail -1)" -- run -b kprobe,tracepoint -w churn
                                                  the same run on another kernel, in a VM
"""


def build_parser() -> argparse.ArgumentParser:
    """The `tpbench` parser, with every subcommand in COMMANDS."""
    parser = Parser(
        prog="tpbench",
        description="Do tracepoints beat kprobes and libpcap for observing TCP on this kernel? "
        "Runs TCP workloads between two network namespaces under each observer and records "
        "overhead, fidelity and visibility against the kernel's own counters.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tpbench {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line: `tpbench COMMAND ...`; the handler's exit status, or 2 (usage), 130 (signal) or 1
    (internal error) after one stderr line; 1 on a broken pipe."""
    interrupts.install()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        handler = getattr(args, "handler", None)
        if handler is None:
            raise UsageError(f"unknown command {args.command!r}")
        return handler(args)
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
