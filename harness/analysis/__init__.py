"""Analysis: everything computed from run.json alone (never from the backends, workloads or netns
that made it; an import-linter contract keeps it so), so `tpbench report` recomputes it all.

  stats          per-cell metrics with confidence intervals, overhead against the baseline, verdicts
  toggle_stats   the toggled measurement's paired windows: ratios and their intervals
  fidelity       events seen against what the workload declared and the kernel counted
  flowmatch      per-flow matching of sampled connections, event by event
  attribution    whether the observer named the process behind each event
  visibility     the kernel-state visibility matrix
  inkernel       in-kernel cost per event from the kernel's bpf_stats
  answers        the tracepoint-vs-libpcap answer per workload, from the paired comparisons
  sweeps         sweeps over one parameter and their crossovers (plots.py draws them)
  headline       the one-screen answer: tracepoint against libpcap, with the peers
  benchjson      pytest-benchmark's JSON, written from a record
  full           all of it: analysis.json
"""
