"""The run record: results/<run-id>/run.json, a durable, versioned account of one run.

It holds raw numbers only (what each trial's generator did, the kernel's counters, what each
observer saw and what it cost) plus what is needed to interpret them later: kernel release and
capability probe, the headers bcc used, the git commit, the command line. Analysis and reports
read only this file. It is rewritten atomically after every trial, so an interrupted run keeps
every finished trial and says it is incomplete.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .errors import UsageError

SCHEMA_VERSION = 1
# The no-observer baseline's backend name, as every record spells it (harness/backends/none.py)
BASELINE = "none"


def new_run_id() -> str:
    """Sortable and short: `20261126T140512-3fa9` (it also names the run's namespaces)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2)


def utc_now() -> str:
    """Now, UTC, ISO 8601 to the millisecond."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def git_commit(where: Path | None = None) -> dict[str, Any] | None:
    """{"commit", "dirty"} of the git checkout at `where` (default: this source tree), or None if git cannot say."""
    where = where or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write beside the target, fsync, rename over it: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes it private; a result is meant to be read
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class InvalidRecord(RuntimeError):
    """The runner wrote a run.json that its readers refuse (harness/schema.py): a bug in tpbench."""


class RunRecord:
    """The in-memory run.json, saved after every change that matters."""

    def __init__(self, directory: Path, run_id: str, meta: dict[str, Any]):
        self.directory = directory
        self.path = directory / "run.json"
        self.data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "run_id": run_id,
            "status": "running",
            "started_at": utc_now(),
            "finished_at": None,
            "command_line": sys.argv,
            "git": git_commit(),
            **meta,
            "cells": [],
        }

    def add_cell(self, cell: dict[str, Any]) -> dict[str, Any]:
        cell = {**cell, "trials": []}
        self.data["cells"].append(cell)
        return cell

    def save(self) -> None:
        write_json_atomic(self.path, self.data)

    def validate(self) -> None:
        """Raise schema.RecordError at the first field of the record, as it stands, that `tpbench
        report` and `tpbench compare` could not read (harness/schema.py, their check on load)."""
        from .schema import validate_run  # imported here: schema.py reads SCHEMA_VERSION from this module

        validate_run(self.data)

    def finish(self, status: str, error: str | None = None) -> None:
        """Mark the run's end and save it, then hold a complete record to the schema its readers check:
        a record they would refuse is a tpbench bug, raised as InvalidRecord (after saving: nothing is lost)."""
        self.data["status"] = status
        self.data["finished_at"] = utc_now()
        if error:
            self.data["error"] = error
        self.save()
        if status != "complete":  # an interrupted or failed run exits as it is: its readers say what is wrong
            return
        try:
            self.validate()
        except UsageError as exc:  # schema.RecordError
            raise InvalidRecord(f"{self.path} was saved, but tpbench report would refuse it: {exc}") from None
