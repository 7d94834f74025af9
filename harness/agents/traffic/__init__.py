"""Traffic generators, one per workload (harness/workloads/<name>.py starts them): churn (C twin
in c/churn.c), rr, stream, resets."""
