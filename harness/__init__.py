"""tpbench: does tracing TCP through tracepoints beat kprobes and libpcap on this kernel?

The harness runs synthetic TCP workloads between two network namespaces, observes them with
pluggable backends, and records raw numbers (ground truth from the generator and the kernel's
own SNMP counters, what each observer saw, what it cost) in a versioned run record.
"""

__version__ = "0.1.0"
