"""What several subcommands share: the one-line-error parser, argument types, the run options, progress."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any, NoReturn

from ..errors import Interrupted, UsageError


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) with exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def add_command(subparsers: argparse._SubParsersAction, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand's parser; its epilog is printed as written (examples keep their line breaks)."""
    return subparsers.add_parser(name, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


# argument types: a bad value is reported by argparse as "argument -n/--trials: <message>"

def comma_list(text: str) -> list[str]:
    """argparse type: `a,b` -> ['a', 'b'] (an empty name is an error)."""
    items = [part.strip() for part in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"empty name in {text!r}")
    return items


def setting_list(text: str) -> list[str]:
    """argparse type: `kprobe,tracepoint[flavour=tp,mode=aggregate]` -> two backend settings."""
    from ..params import split_settings

    try:
        return split_settings(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


# options shared by the measuring subcommands (run, bench; toggle takes --measure-anyway only)

def add_run_options(sub: argparse.ArgumentParser, trials_default: int | None) -> None:
    """The options `run` and `bench` share: --trials, --out, --json, --quiet, --measure-anyway."""
    sub.add_argument("-n", "--trials", type=positive_int, default=trials_default,
                     help="trials per cell, interleaved across cells "
                     f"(default {trials_default if trials_default else 'from the profile'})")
    sub.add_argument("-o", "--out", type=Path, default=Path("results"),
                     help="folder that receives <run-id>/run.json (default ./results)")
    sub.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    sub.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    add_measure_anyway(sub)


def add_measure_anyway(sub: argparse.ArgumentParser) -> None:
    """The --measure-anyway option: measure despite what the preflight found (every result marked)."""
    sub.add_argument("--measure-anyway", action="store_true",
                     help="measure although the preflight finds another tracer or capture on the hooks, "
                     "or a busy host (every result is marked); leftovers of tpbench are refused regardless")


# what the measuring subcommands print

@contextlib.contextmanager
def progress_display(quiet: bool):
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


@contextlib.contextmanager
def analysed_if_interrupted(out: Path, run_id: str):
    """On Ctrl-C or SIGTERM inside the block, what the run saved so far (run.json is written after
    every trial and every toggled cycle) is analysed all the same (analysis.json, report.md), then
    the interrupt goes on to main(), which says so and exits 130."""
    try:
        yield
    except Interrupted:
        from ..report import load_run, write_outputs

        saved = out / run_id
        if (saved / "run.json").exists():
            try:
                write_outputs(saved, load_run(saved))
            except Exception as exc:  # the interrupt, not the analysis, is what the user is told of last
                print(f"tpbench: the interrupted run could not be analysed: {exc}", file=sys.stderr)
        raise


def summary(record) -> dict[str, Any]:
    """The --json summary of a run record (run, bench)."""
    data = record.data
    return {
        "run_id": data["run_id"],
        "run_json": str(record.path),
        "status": data["status"],
        "kernel": data["kernel"]["release"],
        "headers": {"kind": data["headers"]["kind"], "package_version": data["headers"]["package_version"]},
        "cells": data["cells"],
    }
