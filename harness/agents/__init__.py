"""Agents: small programs run as their own processes (`python -m harness.agents.<role>.<name>`),
whose CPU the harness measures, so they import only what is light: harness.tcp (the model),
harness.decoders, harness.counters and agents.common, never harness.backends or harness.workloads
(an import-linter contract in pyproject.toml keeps it so).

  traffic/     the workloads' generators, run inside a topology's namespaces: churn (and its C
               twin, traffic/c/churn.c), rr, stream, resets
  observers/   the backends' observer processes: pcap_capture, ringbuf_py_consumer,
               sockdiag_poller, tracefs_reader
  common.py    what both share: JSON-line output, CPU accounting, the live counter, argv parsing

Each prints JSON lines on stdout: first {"ready": ...} when it can take traffic (or events), last
its result.
"""
