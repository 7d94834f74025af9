"""Agents whose hot loop is C (harness/agents/traffic/c/*.c), built with gcc by `make setup`.

A binary lives in <venv>/libexec/tpbench/ and is rebuilt here, on first use, when it is missing
or older than its source or than harness/tcp.py, whose numbers it is compiled with (tcp.c_defines():
-DFLOW_SAMPLE=...); gcc is one of the Debian packages `make setup` installs. Building is
atomic (compile to a temporary name, rename), so concurrent runs never execute half a binary.

`harness.workloads.native.main()` builds them all (what scripts/setup.sh runs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .. import tcp
from .base import WorkloadError

SOURCES = Path(__file__).resolve().parent.parent / "agents" / "traffic" / "c"
BUILD_DIR = Path(sys.prefix) / "libexec" / "tpbench"
CFLAGS = ("-O2", "-Wall", "-Wextra")


def agent_binary(name: str) -> Path:
    """The C agent `name`'s binary, compiled with gcc first when missing or older than its source or tcp.py.

    WorkloadError when gcc is missing or fails.
    """
    source = SOURCES / f"{name}.c"
    binary = BUILD_DIR / name
    newest_input = max(source.stat().st_mtime, Path(tcp.__file__).stat().st_mtime)
    if binary.exists() and binary.stat().st_mtime >= newest_input:
        return binary
    if shutil.which("gcc") is None:
        raise WorkloadError(f"the C {name} agent is not built and gcc is missing (run make setup)")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f".{name}.{os.getpid()}")
    result = subprocess.run(["gcc", *CFLAGS, *tcp.c_defines(), "-o", str(partial), str(source)], capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise WorkloadError(f"gcc failed on {source.name}: {(result.stderr.strip().splitlines() or ['no message'])[-1]}")
    partial.rename(binary)
    return binary


def main() -> None:
    """Build every C agent (what scripts/setup.sh runs), one line each."""
    for source in sorted(SOURCES.glob("*.c")):
        print(f"setup: built {agent_binary(source.stem)}")


if __name__ == "__main__":
    main()
