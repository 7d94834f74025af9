"""The C helpers tpbench runs, built with gcc once per source and flags: the churn agent's hot loop
(harness/agents/traffic/c/churn.c), the tracepoint backend's ring-buffer consumer and the pcap
backend's capture consumer (harness/backends/*_consumer.c).

A binary is named by a hash of its source, its flags and its libraries, under ~/.cache/tpbench/bin.
The model's numbers reach every one as -D flags (tcp.c_defines(): FLOW_SAMPLE, NSTATES, KIND_*), so
none is kept in step by a comment; a changed source or number makes a new binary, and nothing else
does (an edit elsewhere in tcp.py rebuilds nothing, which matters in `tpbench vm`: the guest sees this
host's files read-only and runs what was built here). Built on first use, or all at once by `make
setup` (`python -m harness.cbuild`; `python -m harness.cbuild NAME` prints one's path, building it if
needed). Building is atomic (a temporary name, then rename), so concurrent runs never execute half
a binary.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import tcp
from .headers import CACHE_DIR

ROOT = Path(__file__).resolve().parent
# name -> (source, libraries, what it is, for messages)
HELPERS: dict[str, tuple[Path, tuple[str, ...], str]] = {
    "churn": (ROOT / "agents" / "traffic" / "c" / "churn.c", (), "the C churn agent"),
    "ringbuf_consumer": (ROOT / "backends" / "ringbuf_consumer.c", ("-lbpf",), "the C ring-buffer consumer"),
    "pcap_consumer": (ROOT / "backends" / "pcap_consumer.c", ("-lpcap",), "the C capture consumer"),
}
CFLAGS = ("-O2", "-Wall", "-Wextra")


class BuildError(RuntimeError):
    """gcc is missing or failed: the message names the helper and gcc's first error."""


def binary(name: str) -> Path:
    """The helper `name`'s binary, compiled first if this source and these flags never were."""
    source, libraries, what = HELPERS[name]
    flags = [*CFLAGS, *tcp.c_defines()]
    key = hashlib.sha256(source.read_bytes() + "\0".join([*flags, *libraries]).encode()).hexdigest()[:12]
    path = CACHE_DIR / "bin" / f"{name}-{key}"
    if path.exists():
        return path
    if shutil.which("gcc") is None:
        raise BuildError(f"{what} is not built for this source and gcc is missing (run make setup)")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    build = subprocess.run(["gcc", *flags, "-o", str(staging), str(source), *libraries],
                           capture_output=True, text=True)
    if build.returncode != 0:
        staging.unlink(missing_ok=True)
        first = next((line for line in build.stderr.splitlines() if "error" in line), build.stderr.strip())
        raise BuildError(f"cannot build {what} (gcc {' '.join(libraries)}): {first or 'no message'}")
    staging.rename(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: build every helper (what scripts/setup.sh runs), or print one's path."""
    asked = argv if argv is not None else sys.argv[1:]
    unknown = [name for name in asked if name not in HELPERS]
    if unknown:
        print(f"cbuild: unknown helper {unknown[0]!r} (known: {', '.join(HELPERS)})", file=sys.stderr)
        return 2
    try:
        for name in asked or HELPERS:
            built = binary(name)
            print(built if asked else f"setup: built {built}")
    except BuildError as exc:
        print(f"cbuild: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
