"""The churn agent's C hot loop (harness/agents/traffic/c/churn.c), as harness/cbuild.py builds it."""

from __future__ import annotations

from pathlib import Path

from .. import cbuild
from .base import WorkloadError


def agent_binary(name: str) -> Path:
    """The C agent `name`'s binary (cbuild: built once per source and flags); WorkloadError when
    gcc is missing or fails."""
    try:
        return cbuild.binary(name)
    except cbuild.BuildError as exc:
        raise WorkloadError(str(exc)) from None
