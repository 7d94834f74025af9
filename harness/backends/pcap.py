"""`pcap` backend: libpcap packet capture on the server's veth, TCP socket events inferred from headers.

The baseline the tracepoint claim is made against, so it is the capture a competent engineer would
deploy: libpcap's default Linux path (an AF_PACKET socket with a TPACKET_V3 memory-mapped ring,
libpcap 1.3+ / Linux 3.2+), a kernel-side cBPF filter (rejected packets are never copied), headers
only (snaplen), a 64 MiB ring and a 100 ms block timeout instead of immediate mode (immediate mode
makes libpcap fall back to TPACKET_V2 and wake up per packet).

Where: the server's end of the veth pair, inside the server's namespace. A veth end carries every
packet of both directions once, so one end suffices; the server's is where the passive opens,
SYN-ACK retransmits and no-socket RSTs originate, and the stack that received what it captured.

Filters (`-p filter=...`, both measured):
  state  `tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0`: the cheapest way capture can follow
         connection state (4 packets per churn connection)
  full   `tcp`: every segment, needed for data retransmissions and tcp_probe-like data
Consumers (`-p consumer=...`, both measured):
  python   pcapy-ng (a maintained binding whose wheel bundles libpcap 1.9.1, so no libpcap-dev or
           compiler is needed, unlike python-libpcap) in a capture agent started in the server's
           namespace, decoding every packet in a Python callback and inferring as it goes
           (harness/agents/observers/pcap_capture.py): what a Python tool costs. A process rather than a
           thread: its CPU time is the consumer's alone, it cannot contend for the runner's GIL,
           and a hung capture is killed with the namespace.
  tcpdump  tcpdump (Debian's, on the system libpcap) writing the headers to a pcap file on tmpfs,
           read afterwards with dpkt, outside the measured loop: the lower bound of libpcap's cost.
  c        pcap_consumer.c, libpcap in C (Debian's libpcap, built with -lpcap), decoding every packet
           as it reads and counting it by direction and flags (SYN, SYN-ACK, FIN, RST): the like of
           the tracepoint backend's C ring-buffer consumer, for the toggled measurement only.
The python and tcpdump consumers feed the same inference (harness/decoders/pcap_infer.py), so they differ only in
how packets reach it.

Costs: the consumer's CPU time (rusage of the reaped process); the kernel side (AF_PACKET taps,
the cBPF filter, copies into the ring) is system and softirq time, which the runner measures.
Drops: pcap_stats() per trial (the Python agent) or tcpdump's closing counts, with libpcap's own
caveat (see PCAP_STATS_CAVEAT).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from netns import Host, Topology

from ..decoders.pcap_file import PcapFileError, read_capture_file
from ..decoders.pcap_infer import ASSUMPTIONS, INVISIBLE, INVISIBLE_STATE_FILTER, MIN_SNAPLEN
from ..errors import UsageError
from ..kernel import KernelProbe
from ..params import Param
from .. import cbuild
from ..system import die_with_runner
from .processes import DeferredCpu, kill, process_cpu_s, read_line, reap
from ..tcp import EVENT_KINDS, SIDES
from .base import Availability, Backend, Observation

FILTERS = {
    "state": "tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0",
    "full": "tcp",
}
CONSUMERS = ("python", "tcpdump", "c")
VISIBLE_KINDS = ("state_change", "retransmit", "synack_retransmit", "reset_sent", "reset_received")


def _consumer_binary() -> Path:
    """The C capture consumer (pcap_consumer.c, built by harness/cbuild.py); CaptureError if it cannot be."""
    try:
        return cbuild.binary("pcap_consumer")
    except cbuild.BuildError as exc:
        raise CaptureError(str(exc)) from None


def sides_of(topology: Topology) -> dict[str, str]:
    """address -> side name: each topology has its own pair of addresses."""
    return {topology.client.address: "client", topology.server.address: "server"}
PCAP_STATS_CAVEAT = (
    "pcap_stats(3PCAP): the counters are only good for percentages (they differ between platforms "
    "and are not exact); on Linux `received` counts only packets that passed the filter (and "
    "includes those dropped), `dropped` is packets the ring had no room for, `if_dropped` is the "
    "interface's own drop counter (not the capture's)"
)
# tcpdump sets a 1000 ms buffer timeout (no option changes it but --immediate-mode, which leaves
# TPACKET_V3): a partly filled ring block reaches tcpdump at most this long after its last packet.
TCPDUMP_TIMEOUT_MS = 1000
START_TIMEOUT_S = 15.0
RESULT_TIMEOUT_S = 120.0  # a consumer far behind works through a full ring before it answers
TMPFS = Path("/dev/shm")
_TCPDUMP_COUNT = re.compile(r"^(\d+) packets? (captured|received by filter|dropped by kernel|dropped by interface)")


class CaptureError(RuntimeError):
    """The capture could not be opened or did not report: a one-line reason."""


def _read_line(stream, timeout_s: float, what: str) -> str:
    return read_line(stream, timeout_s, what, CaptureError)


def observation_from(result: dict[str, Any], details: dict[str, Any], filter_name: str) -> Observation:
    """The common schema from the inference's per-side counts."""
    sides: dict[str, dict[str, dict[str, int]]] = {}
    # What capture can see is reported even when it saw none (0 is a measurement); what it cannot
    # see (sock_destroy, probe) is absent, and listed under details["invisible"].
    events: dict[str, int] = dict.fromkeys(VISIBLE_KINDS, 0)
    transitions: dict[str, int] = {}
    for counts in result["sides"].values():
        for kind, n in counts["events"].items():
            assert kind in EVENT_KINDS, kind
            events[kind] = events.get(kind, 0) + n
        for name, n in counts["transitions"].items():
            transitions[name] = transitions.get(name, 0) + n
    for side in SIDES:
        counts = result["sides"].get(side, {"events": {}, "transitions": {}})
        sides[side] = {"events": {**dict.fromkeys(VISIBLE_KINDS, 0), **counts["events"]},
                       "transitions": counts["transitions"]}
    invisible = dict(INVISIBLE)
    if filter_name == "state":
        invisible.update(INVISIBLE_STATE_FILTER)
    details = {
        **details,
        "packets": result["packets"],
        "opens": {side: counts.get("opens", {}) for side, counts in result["sides"].items()},
        "flows": result["flows"],
        "other_addresses": result["sides"].get("other"),
        "invisible": invisible,
        "assumptions": list(ASSUMPTIONS),
    }
    if "flow_events" in result:  # sampled flows, for the runner's per-flow matching
        details["flow_events"] = {
            **result["flow_events"],
            "scored": ["transitions"],  # no packet says when a socket is destroyed
            "invisible": sorted(name for key in invisible for name in key.split(", ") if "->" in name),
            # packet times are microseconds, converted from CLOCK_REALTIME: a SYN may read up to a
            # microsecond or so before the connect() that sent it began
            "clock_tolerance_ns": 2000,
        }
    return Observation(events=dict(sorted(events.items())), transitions=dict(sorted(transitions.items())),
                       sides=sides, lost=details["pcap_stats"]["dropped"], details=details)


def capture_agent_argv(config: dict[str, Any], *extra: str) -> list[str]:
    """The Python capture agent's command line for a capture config (harness/agents/observers/pcap_capture.py)."""
    return [
        sys.executable, "-m", "harness.agents.observers.pcap_capture", *extra,
        "--interface", config["interface"], "--expression", config["expression"],
        "--snaplen", str(config["snaplen"]), "--buffer-bytes", str(config["buffer_bytes"]),
        "--timeout-ms", str(config["timeout_ms"]),
        *[arg for address, side in config["sides"].items() for arg in ("--side", f"{address}={side}")],
    ]


class _PythonCapture:
    """The capture agent (pcapy-ng) in the server's namespace."""

    def __init__(self, host: Host, config: dict[str, Any]):
        self.config = config
        self.process: subprocess.Popen | None = None
        self.deferred = DeferredCpu()
        argv = capture_agent_argv(config)
        try:
            # its own session: a terminal's SIGINT goes to the runner, which stops the agent itself
            self.process = host.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, start_new_session=True,
                                      preexec_fn=die_with_runner)
            line = _read_line(self.process.stdout, START_TIMEOUT_S, "answer from the capture agent")
            message = json.loads(line) if line.strip() else None
            if message is None or "error" in message:
                self._fail(message["error"] if message else None)
            self.ready = message
        except BaseException:
            self.close()
            raise

    def _fail(self, error: str | None) -> None:
        if error is None:
            reap(self.process, 5)
            stderr = self.process.stderr.read().decode(errors="replace").strip().splitlines()
            error = f"capture agent exited ({self.process.returncode}): {stderr[-1] if stderr else 'no output'}"
        raise CaptureError(error)

    def loop_ended(self) -> None:
        self.deferred.mark("agent", self.process.pid if self.process else None)

    def detach(self) -> Observation:
        try:
            self.process.stdin.close()  # the agent's signal to drain and report
            line = _read_line(self.process.stdout, RESULT_TIMEOUT_S, "result from the capture agent")
            if not line.strip():
                self._fail(None)
            result = json.loads(line)["result"]
            cpu = reap(self.process, 10)
        finally:
            self.close()
        cpu["startup"] = round(self.ready["cpu_s"], 4)
        cpu["capturing"] = round(cpu["total"] - self.ready["cpu_s"], 4)
        stats = result.pop("pcap_stats")
        return observation_from(result, {
            **self.config,
            "library": f"pcapy-ng with {self.ready['libpcap']}",
            "pcap_stats": {**stats, "caveat": PCAP_STATS_CAVEAT},
            # packets the kernel queued that the consumer never read (0 once drained)
            "undrained": stats["received"] - stats["dropped"] - result["packets"]["captured"],
            "consumer_cpu_s": cpu,
            "deferred_cpu_s": self.deferred.since("agent", cpu["total"]),  # its drain after the loop
            "drain_s": result.get("drain_s"),
        }, self.config["filter"])

    def close(self) -> None:
        kill(self.process)


class _SwitchedCapture:
    """A live consumer in switched mode, its packet socket open only while on: the Python capture
    agent (pcapy-ng) or pcap_consumer.c (libpcap in C), which speak the same protocol."""

    def __init__(self, host: Host, config: dict[str, Any]):
        self.config = config
        self.process: subprocess.Popen | None = None
        if config["consumer"] == "c":
            by_side = {side: address for address, side in config["sides"].items()}
            argv = [str(_consumer_binary()),
                    config["interface"], config["expression"], str(config["snaplen"]),
                    str(config["buffer_bytes"]), str(config["timeout_ms"]), by_side["client"], by_side["server"]]
        else:
            argv = capture_agent_argv(config, "--switched")
        try:
            self.process = host.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, start_new_session=True, preexec_fn=die_with_runner)
            self.ready = self._answer("ready")
        except BaseException:
            kill(self.process)
            raise

    def _answer(self, key: str, timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
        line = _read_line(self.process.stdout, timeout_s, f"{key} from the capture agent")
        message = json.loads(line) if line.strip() else {"error": "the capture agent exited"}
        if key not in message:
            raise CaptureError(message.get("error", f"unexpected answer {message}"))
        return message

    def _say(self, command: str) -> None:
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()

    def on(self) -> None:
        self._say("on")
        self._answer("on")

    def off(self) -> dict[str, Any]:
        self._say("off")
        answer = self._answer("off", RESULT_TIMEOUT_S)  # after the agent has read its whole backlog
        # before_filter: packets the socket took in before its filter was on (read apart, not counted)
        return {"events": answer["captured"], "lost": answer["dropped"], "received": answer["received"],
                "before_filter": answer["before_filter"],
                **({"flags": answer["counts"]} if "counts" in answer else {})}

    def tasks(self) -> list[int]:
        return [self.process.pid]

    def close(self) -> dict[str, Any]:
        try:
            self.process.stdin.close()
            cpu = reap(self.process, 10)
        except subprocess.TimeoutExpired:
            cpu = {"error": "the capture agent did not exit within 10 s of its stop: killed"}
        finally:
            kill(self.process)
        return {**{k: v for k, v in self.config.items() if k != "sides"}, "library": f"pcapy-ng with {self.ready['libpcap']}",
                "consumer_cpu_s": cpu}


class _TcpdumpCapture:
    """tcpdump -w to tmpfs in the server's namespace; the file is read after it exits."""

    def __init__(self, host: Host, config: dict[str, Any]):
        self.config = config
        self.process: subprocess.Popen | None = None
        self.directory: Path | None = None
        self.deferred = DeferredCpu()
        tcpdump = shutil.which("tcpdump")
        if tcpdump is None:
            raise UsageError("pcap: consumer=tcpdump needs tcpdump on PATH (make setup installs it)")
        try:
            # tmpfs: writing the capture costs no disk I/O; root-only (0700), removed at close
            self.directory = Path(tempfile.mkdtemp(prefix="tpbench-pcap-", dir=TMPFS if TMPFS.is_dir() else None))
            self.path = self.directory / "capture.pcap"
            argv = [
                tcpdump, "-i", config["interface"], "-s", str(config["snaplen"]),
                "-B", str(config["buffer_bytes"] // 1024),  # KiB
                "-p", "-n",  # no promiscuous mode (a veth needs none), no name look-ups
                "-Z", "root",  # keep root: the file lives in a root-only directory
                "-w", str(self.path), "--", config["expression"],
            ]
            self.process = host.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, start_new_session=True,
                                      preexec_fn=die_with_runner)
            self.started_cpu_s = None
            # tcpdump says "listening on ..." once the handle is active and the filter attached
            while True:
                line = _read_line(self.process.stderr, START_TIMEOUT_S, "answer from tcpdump")
                if not line:
                    reap(self.process, 5)
                    raise CaptureError(self._stderr_error() or f"tcpdump exited ({self.process.returncode})")
                if line.startswith("tcpdump: listening on"):
                    break
                self.early_stderr = line
            self.started_cpu_s = process_cpu_s(self.process.pid)
        except BaseException:
            self.close()
            raise

    def _stderr_error(self) -> str:
        text = getattr(self, "early_stderr", "") + self.process.stderr.read().decode(errors="replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return f"cannot capture on {self.config['interface']} with filter {self.config['expression']!r}: " \
               f"{lines[0].removeprefix('tcpdump: ')}" if lines else ""

    def _settle(self) -> None:
        """Until the file stops growing for longer than two block timeouts (a block's retire timer
        runs up to one period late): every block written. tcpdump buffers its writes, so the file
        grows in chunks while it catches up, and a packet left in an open block at SIGINT is
        counted `received` but never written: reported as `undrained`."""
        deadline = time.monotonic() + RESULT_TIMEOUT_S
        size, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            current = self.path.stat().st_size if self.path.exists() else 0
            if current != size:
                size, since = current, time.monotonic()
            elif time.monotonic() - since > 2 * TCPDUMP_TIMEOUT_MS / 1000 + 0.2:
                return
            time.sleep(0.05)

    def loop_ended(self) -> None:
        self.deferred.mark("tcpdump", self.process.pid if self.process else None)

    def detach(self) -> Observation:
        try:
            self._settle()
            self.process.send_signal(signal.SIGINT)  # tcpdump flushes, prints its counts, exits 0
            cpu = reap(self.process, 30)
            stderr = self.process.stderr.read().decode(errors="replace")
            if self.process.returncode != 0:
                raise CaptureError(f"tcpdump exited ({self.process.returncode}): {stderr.strip()[-200:]}")
            counts = {}
            for line in stderr.splitlines():
                match = _TCPDUMP_COUNT.match(line.strip())
                if match:
                    counts[match.group(2)] = int(match.group(1))
            file_bytes = self.path.stat().st_size
            started, started_cpu = time.perf_counter(), time.thread_time()
            try:
                result = read_capture_file(self.path, self.config["sides"])
            except PcapFileError as exc:
                raise CaptureError(str(exc)) from None
            parse_s, parse_cpu_s = time.perf_counter() - started, time.thread_time() - started_cpu
        finally:
            self.close()
        if self.started_cpu_s is not None:
            cpu["startup"] = round(self.started_cpu_s, 4)
            cpu["capturing"] = round(cpu["total"] - self.started_cpu_s, 4)
        stats = {"received": counts.get("received by filter"), "dropped": counts.get("dropped by kernel", 0),
                 "if_dropped": counts.get("dropped by interface", 0), "caveat": PCAP_STATS_CAVEAT}
        captured = counts.get("captured")
        if captured != result["packets"]["captured"]:
            raise CaptureError(f"tcpdump said {captured} packets captured, its file holds "
                               f"{result['packets']['captured']}")
        return observation_from(result, {
            **self.config,
            "library": _tcpdump_version(),
            "pcap_stats": stats,
            "undrained": (stats["received"] or 0) - stats["dropped"] - captured,
            "consumer_cpu_s": cpu,
            "file_bytes": file_bytes,
            "parse_s": round(parse_s, 3),
            "parse_cpu_s": round(parse_cpu_s, 4),
            # tcpdump's flush after the loop plus the file's parse into events: all in the cost
            "deferred_cpu_s": round((self.deferred.since("tcpdump", cpu["total"]) or 0.0) + parse_cpu_s, 6),
        }, self.config["filter"])

    def close(self) -> None:
        kill(self.process)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def _tcpdump_version() -> str:
    try:
        out = subprocess.run(["tcpdump", "--version"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "tcpdump"
    return "; ".join(out.splitlines()[:2])


class PcapBackend(Backend):
    name = "pcap"
    description = "libpcap on the server's veth: TPACKET_V3 ring, kernel cBPF filter, headers only"
    hooks = ("libpcap: AF_PACKET TPACKET_V3 ring + cBPF socket filter on the server's veth",)
    params = (
        Param("filter", str, "state", "state: SYN/FIN/RST only; full: all TCP", choices=tuple(FILTERS)),
        Param("consumer", str, "python", "python: pcapy-ng per-packet callback; tcpdump: -w to tmpfs, "
              "read afterwards; c: libpcap in C decoding as it reads (pcap_consumer.c; toggled only)",
              choices=CONSUMERS),
        Param("snaplen", int, MIN_SNAPLEN, "bytes kept per packet: 54 = Ethernet+IPv4+TCP without options "
              "(no payload byte); 94 keeps every TCP option", minimum=MIN_SNAPLEN, maximum=262144),
        # libpcap's default is 2 MiB; 64 MiB holds a 45,000-connection churn burst (180k header-only
        # packets) while a Python consumer gets no CPU from a generator at its top rate (16 MiB
        # dropped 3% there).
        Param("buffer_mib", int, 64, "capture ring size in MiB (tcpdump -B)", minimum=1, maximum=1024),
        Param("timeout_ms", int, 100, "ring block retire timeout of the python consumer (tcpdump uses "
              "1000)", minimum=1, maximum=1000),
    )

    def availability(self, probe: KernelProbe, params: dict[str, Any] | None = None) -> Availability:
        if importlib.util.find_spec("pcapy") is None:
            return Availability(False, "Python module pcapy (pcapy-ng) not installed (make setup)", ("pcapy-ng",))
        if not probe.available("tool:tcpdump") or not probe.available("libpcap"):
            return Availability(
                True, "pcapy-ng present; consumer=tcpdump unavailable: "
                f"{probe['tool:tcpdump'].reason if 'tool:tcpdump' in probe.capabilities else 'tcpdump missing'}",
                ("tool:tcpdump",),
            )
        return Availability(True, f"pcapy-ng (bundled libpcap) and tcpdump ({probe['libpcap'].reason})")

    def attach(self, topology: Topology, params: dict[str, Any]) -> _PythonCapture | _TcpdumpCapture:
        if params["consumer"] == "c":
            raise UsageError("pcap: consumer=c counts packets by flags for the toggled measurement (tpbench "
                             "toggle, make bench); trials infer per-flow transitions with consumer=python or tcpdump")
        return start_capture(topology.server, {**capture_config(topology.server, params), "sides": sides_of(topology)})

    def prepare(self, topology: Topology, params: dict[str, Any]) -> _SwitchedCapture:
        if params["consumer"] == "tcpdump":
            raise UsageError("pcap: the toggled measurement needs a live consumer (consumer=python or c): tcpdump "
                             "writes a file that is parsed after the capture")
        try:
            return _SwitchedCapture(topology.server, {**capture_config(topology.server, params),
                                                      "sides": sides_of(topology)})
        except CaptureError as exc:
            raise UsageError(f"pcap: {exc}") from None


def capture_config(host: Host, params: dict[str, Any]) -> dict[str, Any]:
    """What to open where (recorded in the trial's details as is)."""
    return {
        "consumer": params["consumer"],
        "filter": params["filter"],
        "expression": FILTERS[params["filter"]],
        "interface": host.ifname,
        "netns": host.netns,
        "snaplen": params["snaplen"],
        "buffer_bytes": params["buffer_mib"] << 20,
        "timeout_ms": TCPDUMP_TIMEOUT_MS if params["consumer"] == "tcpdump" else params["timeout_ms"],
    }


def start_capture(host: Host, config: dict[str, Any]) -> _PythonCapture | _TcpdumpCapture:
    """Open the capture (ready when this returns); a capture that cannot open is a UsageError."""
    kind = _PythonCapture if config["consumer"] == "python" else _TcpdumpCapture
    try:
        return kind(host, config)
    except CaptureError as exc:
        raise UsageError(f"pcap: {exc}") from None
