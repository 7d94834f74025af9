"""Decoders: pure functions and small state machines turning raw observer data into TCP events in
the common schema. No I/O, no root; backends and observer agents both import them, and they import
only harness.tcp.

  pcap_infer      TCP socket events inferred from packet headers (the pcap backend)
  sockdiag_infer  state changes between two sock_diag snapshots, /proc/net/snmp (sockdiag)
  tracefs_ring    ftrace ring-buffer pages and the seven tracepoints' records (tracefs)
"""
