"""What every agent shares: its JSON-lines protocol, its own CPU time, its command line's common part.

Agents import nothing heavy (no pyroute2, no bcc): they start in milliseconds inside a namespace.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys


def emit(obj: dict) -> None:
    """One JSON object per line on stdout, flushed: the harness reads ready/result messages."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def cpu_seconds() -> float:
    """This process's user + system CPU time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def traffic_parser(doc: str | None) -> argparse.ArgumentParser:
    """A traffic agent's command line: its role, and the server's address and port."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=("server", "client"))
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, required=True)
    return parser
