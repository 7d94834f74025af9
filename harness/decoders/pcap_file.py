"""A pcap file (tcpdump's -w output) read record by record and inferred exactly as the Python
capture agent infers from the live ring (pcap_infer.FlowTracker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..tcp import FLOW_SAMPLE
from .pcap_infer import FlowTracker, decode_ethernet, realtime_to_monotonic


class PcapFileError(ValueError):
    """The file is not a pcap capture of Ethernet frames: a one-line reason."""


def read_capture_file(path: Path, sides: dict[str, str]) -> dict[str, Any]:
    """A pcap file through dpkt's record format, inferred exactly as the Python agent infers."""
    import dpkt

    to_monotonic = realtime_to_monotonic()
    counts = {"captured": 0, "wire_bytes": 0, "not_tcp": 0, "truncated": 0}
    with open(path, "rb") as f:
        file_header = dpkt.pcap.FileHdr(f.read(dpkt.pcap.FileHdr.__hdr_len__))
        magic = file_header.magic
        if magic in (dpkt.pcap.PMUDPCT_MAGIC, dpkt.pcap.PMUDPCT_MAGIC_NANO):
            file_header = dpkt.pcap.LEFileHdr(bytes(file_header))
        if magic not in dpkt.pcap.MAGIC_TO_PKT_HDR:
            raise PcapFileError(f"{path}: not a pcap file (magic {magic:#x})")
        if file_header.linktype != dpkt.pcap.DLT_EN10MB:
            raise PcapFileError(f"{path}: link type {file_header.linktype} is not Ethernet")
        record = dpkt.pcap.MAGIC_TO_PKT_HDR[magic]
        size = record.__hdr_len__
        unit = 1 if magic in (dpkt.pcap.TCPDUMP_MAGIC_NANO, dpkt.pcap.PMUDPCT_MAGIC_NANO) else 1000
        tracker = FlowTracker(sides, flow_sample=FLOW_SAMPLE,
                              timestamp=lambda header: to_monotonic(header.tv_sec, header.tv_usec, unit))
        while True:
            raw = f.read(size)
            if len(raw) < size:
                break
            header = record(raw)
            data = f.read(header.caplen)
            counts["captured"] += 1
            counts["wire_bytes"] += header.len
            segment = decode_ethernet(data, header.len)
            if isinstance(segment, str):
                counts[segment] += 1
            else:
                tracker.feed(segment, header)
    result = tracker.result()
    result["packets"].update(counts)
    return result
