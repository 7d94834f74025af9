"""tpbench compare: runs side by side (kernels, dates, machines), written to compare.md."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .common import add_command


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `compare` subcommand."""
    compare = add_command(
        subparsers,
        "compare",
        help="runs side by side (kernels, dates): overhead, fidelity, loss and in-kernel cost per cell",
        epilog="examples:\n  tpbench compare results/20261126T140512-3fa9 results/20261201T090000-77ab\n"
        "  tpbench compare results/vm-6.1-* results/vm-6.12-* results/host-6.18-matrix-*   (one per kernel)\n"
        "writes compare.md into the current directory (or --out)",
    )
    compare.add_argument("run_dirs", type=Path, nargs="+", metavar="DIR",
                         help="two or more run folders (or run.json files), e.g. one per kernel")
    compare.add_argument("-o", "--out", type=Path, default=Path("."), help="folder for compare.md (default .)")
    compare.set_defaults(handler=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    """Run `tpbench compare`: compare.md from two or more runs into --out, its lines printed."""
    from ..report import compare, load_run

    if len(args.run_dirs) < 2:
        raise UsageError("compare needs at least two run folders")
    runs = [(str(path), load_run(path)) for path in args.run_dirs]
    markdown, lines = with_machines(*compare(runs), [run for _, run in runs])
    target = args.out / "compare.md"
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        target.write_text(markdown)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror}") from None
    print("\n".join(lines))
    print(f"\ncompare: {target}")
    return 0


def with_machines(markdown: str, lines: list[str], runs: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """compare()'s markdown and terminal lines with the runs' machines side by side (harness/machine.py),
    after the list of runs: CPU model, CPUs, MHz, hypervisor, memory, boot id."""
    from ..machine import rows
    from ..report_format import md_table

    letters = [chr(ord("A") + i) for i in range(len(runs))]
    table = rows(runs, letters)
    md = markdown.splitlines()
    after = max((i + 1 for i, line in enumerate(md) if line.startswith(f"- **{letters[-1]}**:")), default=len(md))
    md[after:after] = ["", "## Machines", "", *md_table(["", *letters], table)]
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    terminal = ["\nmachines:"] + ["  " + "  ".join(f"{text:<{w}}" for text, w in zip(row, widths)).rstrip()
                                   for row in [["", *letters], *table]]
    return "\n".join(md) + "\n", [*lines[:len(runs)], *terminal, *lines[len(runs):]]
