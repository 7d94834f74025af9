"""Observer processes the backends start: pcap_capture (pcap), ringbuf_py_consumer (tracepoint,
consumer=python-process), sockdiag_poller (sockdiag), tracefs_reader (tracefs)."""
