"""pytest's hooks only; what tests share is in tests/helpers.py."""

import os
import subprocess

import pytest

from tests.helpers import REPO, TPBENCH


def pytest_sessionstart(session):
    """The suite starts on a host without tpbench's leftovers: a crashed earlier run (a SIGKILLed
    runner, a killed CI job) would otherwise fail every run-based test with "run `tpbench cleanup`
    first". What is removed is printed; leaks of the suite's own runs still fail the tests that made them."""
    if os.geteuid() != 0:
        return
    result = subprocess.run([*TPBENCH, "cleanup"], capture_output=True, text=True, cwd=REPO, timeout=120)
    removed = [line for line in result.stdout.splitlines() if line and line != "nothing of tpbench's found"]
    if result.returncode != 0 or removed:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"before the suite, tpbench cleanup (exit {result.returncode}):", *removed,
                 *result.stderr.strip().splitlines()]
        for line in lines:
            (reporter.write_line if reporter else print)(line)


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: network namespaces and BPF (CI runs as root)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
