"""The benchmark suite: `.venv/bin/python -m pytest benchmarks --benchmark-only` (root).

Timing thresholds live here, never in tests/: the numbers depend on the machine and its load.
`make test` runs `pytest tests` only, so it never runs these.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

C_SOURCES = Path(__file__).resolve().parent / "c"
BUILD_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tpbench" / "bench"


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root: network namespaces")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def churn_reference() -> Path:
    """The C reference pair, built with gcc at benchmark time (rebuilt when the source changes)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (make setup installs it)")
    source = C_SOURCES / "churn_ref.c"
    binary = BUILD_DIR / "churn_ref"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(source)], check=True)
    return binary
