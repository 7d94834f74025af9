"""An agent with more to say than a pipe holds (64 KiB) finishes: its result is read as it is
written and its stderr goes to a file, so neither side can block the other (issue: a 400,000
connection churn sat in anon_pipe_write while the runner waited for it to exit)."""

import subprocess
import sys
from pathlib import Path

import pytest

from harness.workloads.base import Agent, WorkloadError

PIPE_BYTES = 64 * 1024

# Chatters on stderr (4x a pipe), then prints a result line of 8x a pipe, then exits.
LOUD = (
    "import json, sys\n"
    "sys.stdin.read() if sys.argv[1] == 'finish' else None\n"
    f"for i in range({4 * PIPE_BYTES // 64}): sys.stderr.write('x' * 63 + '\\n')\n"
    "sys.stderr.flush()\n"
    f"print(json.dumps({{'flows': ['f' * 60] * {8 * PIPE_BYTES // 64}}}), flush=True)\n"
)


class LocalHost:
    """A Host stand-in that runs the agent here (no namespace needed for pipes)."""

    role = "client"

    def popen(self, argv, **kwargs):
        return subprocess.Popen(argv, **kwargs)


def _agent(mode: str, script: str = LOUD) -> Agent:
    return Agent(LocalHost(), "unused", ["-c", script, mode], executable=Path(sys.executable))


@pytest.mark.parametrize("mode", ["run", "finish"])
def test_a_result_and_stderr_larger_than_a_pipe_block_neither_side(mode):
    """run: the agent ends by itself (wait_result); finish: it ends when its stdin closes."""
    agent = _agent(mode)
    try:
        result = agent.wait_result(timeout_s=30) if mode == "run" else agent.finish(timeout_s=30)
    finally:
        agent.kill()
    assert len(result["flows"]) == 8 * PIPE_BYTES // 64
    assert agent.process.returncode == 0


def test_an_agent_that_dies_reports_its_last_stderr_line():
    agent = _agent("run", "import sys\nfor i in range(5000): print('noise', i, file=sys.stderr)\n"
                          "print('bind: address in use', file=sys.stderr)\nsys.exit(3)\n")
    try:
        try:
            agent.wait_result(timeout_s=30)
        except WorkloadError as exc:
            message = str(exc)
        else:
            raise AssertionError("a dead agent gave a result")
    finally:
        agent.kill()
    assert message == "client agent exited (3) before its result: bind: address in use", message


TRAFFIC_AGENTS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "harness/agents/traffic").glob("*.py")
                        if p.stem != "__init__")


@pytest.mark.parametrize("module", TRAFFIC_AGENTS)
def test_every_traffic_agent_starts_from_the_command_line_agent_builds(module):
    """The argv Agent builds for a workload's agent names a module that exists (CI once found
    every Python agent missing after the agents moved under harness/agents/traffic/)."""
    agent = Agent(LocalHost(), module, ["--help"])
    try:
        out, _ = agent.process.communicate(timeout=30)
    finally:
        agent.kill()
    assert agent.process.returncode == 0, agent.stderr_tail()
    assert out.startswith("usage:") and "{server,client}" in out, out
