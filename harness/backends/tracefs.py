"""`tracefs` backend: the seven TCP tracepoints through ftrace's own ring buffer, no BPF.

What perf's ftrace mode and trace-cmd do: the same stable tracepoints as the `tracepoint` backend
(sock:inet_sock_set_state since 4.16, the tcp:* ones since 4.15/4.16) enabled in a private tracefs
instance (instances/<name>, Linux 4.2+; a private ring buffer, nobody else's tracing touched), a
kernel-side event filter per event (events/<cat>/<name>/filter), and the binary per-CPU pages read
from per_cpu/cpuN/trace_pipe_raw by a reader process (harness/agents/observers/tracefs_reader.py; the page
format is decoded in tracefs_ring.py). What it shows beside the BPF backends: the tracepoint is the
same, the in-kernel work is ftrace's generic one (filter, then copy every field of every matching
event into the ring), and all counting happens in user space.

Filters, from the running kernel's format files: a u8[4] address field compares as a native u32
in an ftrace filter (filter_pred_32 on the raw bytes, measured on 6.18: `saddr == 0x010012c6`
keeps exactly 198.18.0.1), so events with u8[4] addresses are filtered in the kernel on the
topology's two addresses (and family, and protocol for inet_sock_set_state). 28-byte sockaddr
fields (tcp_send_reset 6.10+, tcp_probe) cannot be compared that way: those are filtered on family
where the format has one, and the reader drops other addresses in user space, counting them under
details.filtered_user_space. The user-space check is the BPF backends' handle() predicate, so the
counts are comparable one for one.

Losses are the kernel's own: per_cpu/cpuN/stats `overrun` (overwritten), `dropped events` (ring
full, overwrite off: what we set) and `commit overrun`, plus missed-event marks on pages read.
The instance is created at attach and removed at close, whatever happened in between; its name
starts with `tpb` so `tpbench cleanup` can remove it after a crash (harness/system.py).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

from netns import Topology

from ..errors import UsageError
from ..kernel import KernelProbe, probe_tracepoints
from ..params import Param
from ..system import die_with_runner, tracefs_path
from ..tcp import EVENT_KINDS, TRACEPOINT_KINDS as KINDS, transition
from .base import Availability, Backend, Observation
from .processes import DeferredCpu, kill, read_line, reap
from ..decoders.tracefs_ring import DEFAULT_LAYOUT, native_u32, page_header_layout
from .tracepoint import HOOKS, check_hooks, parse_hooks

INSTANCE_PREFIX = "tpb"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
START_TIMEOUT_S = 15.0
RESULT_TIMEOUT_S = 120.0
LOST_STATS = ("overrun", "commit overrun", "dropped events")


def _check_instance(name: str) -> str | None:
    if name == "":
        return None  # a fresh tpb-tracefs-<pid>-<random> name
    if not _NAME.match(name) or name in (".", ".."):
        return "an instance name is letters, digits, '_', '.', '-' (at most 64)"
    if not name.startswith(INSTANCE_PREFIX):
        return f"must start with {INSTANCE_PREFIX!r} (so `tpbench cleanup` can find a crashed run's instance)"
    return None


def event_filter(tracepoint: str, fields: list[dict[str, Any]], client: str, server: str) -> str | None:
    """The kernel-side filter for one event on this kernel's format, or None if nothing applies."""
    by_name = {f["name"]: f for f in fields}
    terms = []
    if "family" in by_name:
        terms.append("family == 2")  # AF_INET: the harness's topologies are IPv4
    if tracepoint == "sock:inet_sock_set_state" and "protocol" in by_name:
        terms.append("protocol == 6")  # the tracepoint also fires for SCTP and MPTCP sockets
    saddr, daddr = by_name.get("saddr"), by_name.get("daddr")
    if saddr and daddr and saddr["size"] == 4 and daddr["size"] == 4:
        addresses = [native_u32(client), native_u32(server)]
        terms.append("(" + " || ".join(f"{field} == {value:#010x}" for field in ("saddr", "daddr")
                                       for value in addresses) + ")")
    return " && ".join(terms) if terms else None


def read_cpu_stats(instance: Path) -> dict[str, dict[str, int]]:
    """per_cpu/cpuN/stats -> {"cpuN": {"entries": .., "overrun": .., ...}} (integer fields only)."""
    stats = {}
    for path in sorted(instance.glob("per_cpu/cpu*/stats")):
        values = {}
        for line in path.read_text().splitlines():
            key, _, value = line.partition(":")
            value = value.strip()
            if value.isdigit():
                values[key.strip()] = int(value)
        stats[path.parent.name] = values
    return stats


class _Session:
    def __init__(self, topology: Topology, params: dict[str, Any]):
        self.instance: Path | None = None
        self.process: subprocess.Popen | None = None
        self.deferred = DeferredCpu()
        self.enabled: list[Path] = []
        self.closed = False
        tracefs = tracefs_path()
        if tracefs is None:
            raise UsageError("tracefs: tracefs is not mounted (the runner mounts it for a run: run through tpbench)")
        name = params["instance"] or f"tpb-tracefs-{os.getpid()}-{secrets.token_hex(3)}"
        instance = tracefs / "instances" / name
        try:
            instance.mkdir()
        except FileExistsError:
            raise UsageError(f"tracefs: instance {name!r} is already in use ({instance} exists); "
                             "choose another -p tracefs.instance=, or leave it empty") from None
        except OSError as exc:
            raise UsageError(f"tracefs: cannot create instance {instance}: {exc.strerror}") from None
        self.instance = instance  # ours from here on: close() removes it
        try:
            self._attach(tracefs, topology, params)
        except BaseException:
            self.close()
            raise

    def _attach(self, tracefs: Path, topology: Topology, params: dict[str, Any]) -> None:
        instance = self.instance
        (instance / "tracing_on").write_text("0")
        # Ring full -> the newest events are dropped and counted (`dropped events`), as a BPF ring
        # buffer's failed reserve; overwrite mode would silently replace unread pages instead.
        (instance / "options" / "overwrite").write_text("0")
        (instance / "buffer_size_kb").write_text(str(params["buffer_kib"]))  # per CPU
        self.buffer_kib_per_cpu = int((instance / "buffer_size_kb").read_text().split()[0])
        subbuf = instance / "buffer_subbuf_size_kb"  # 6.8+; 4 KiB pages before
        page_size = int(subbuf.read_text()) * 1024 if subbuf.exists() else 4096
        try:
            layout = page_header_layout((tracefs / "events" / "header_page").read_text())
        except (OSError, KeyError):
            layout = DEFAULT_LAYOUT
        caps = probe_tracepoints()
        selected = [HOOKS[name] for name in parse_hooks(params["hooks"])]
        self.attached = [tp for tp in selected if caps[f"tracepoint:{tp}"].available]
        self.absent = {tp: caps[f"tracepoint:{tp}"].reason for tp in selected if tp not in self.attached}
        if not self.attached:
            raise UsageError(f"tracefs: none of the selected tracepoints exists here: {self.absent}")
        events: dict[str, dict[str, Any]] = {}
        self.filters: dict[str, str | None] = {}
        for tp in self.attached:
            category, event = tp.split(":")
            directory = instance / "events" / category / event
            fields = caps[f"tracepoint:{tp}"].data["fields"]
            expression = event_filter(tp, fields, topology.client.address, topology.server.address)
            if expression is not None:
                (directory / "filter").write_text(expression)
            self.filters[tp] = expression
            event_id = int((tracefs / "events" / category / event / "id").read_text())
            events[str(event_id)] = {"tracepoint": tp, "kind": KINDS[tp], "fields": fields}
            (directory / "enable").write_text("1")
            self.enabled.append(directory / "enable")
        self.config = {
            "instance": str(instance),
            "cpus": sorted(int(p.name[3:]) for p in instance.glob("per_cpu/cpu*")),
            "page_size": page_size,
            "layout": layout,
            "poll_ms": params["poll_ms"],
            "consumer": params["consumer"],
            "client": native_u32(topology.client.address),
            "server": native_u32(topology.server.address),
            "events": events,
        }
        argv = [sys.executable, "-m", "harness.agents.observers.tracefs_reader", json.dumps(self.config)]
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        start_new_session=True, cwd=Path(__file__).resolve().parents[2],
                                        preexec_fn=die_with_runner)
        line = read_line(self.process.stdout, START_TIMEOUT_S, "answer from the tracefs reader")
        message = json.loads(line) if line.strip() else None
        if message is None or "error" in message:
            raise RuntimeError(f"tracefs reader: {message['error'] if message else 'exited without a word'}")
        self.ready = message
        self.stats_before = read_cpu_stats(instance)
        (instance / "tracing_on").write_text("1")

    def loop_ended(self) -> None:
        self.deferred.mark("reader", self.process.pid if self.process else None)

    def detach(self) -> Observation:
        try:
            (self.instance / "tracing_on").write_text("0")  # writers stop: the drain below ends
            self.process.stdin.close()
            line = read_line(self.process.stdout, RESULT_TIMEOUT_S, "result from the tracefs reader")
            message = json.loads(line) if line.strip() else {"error": "reader exited without a result"}
            if "error" in message:
                raise RuntimeError(f"tracefs reader: {message['error']}")
            result = message["result"]
            cpu = reap(self.process, 10)
            stats_after = read_cpu_stats(self.instance)
        finally:
            self.close()
        lost_by_cpu = {
            cpu_name: {key: values.get(key, 0) - self.stats_before.get(cpu_name, {}).get(key, 0) for key in LOST_STATS}
            for cpu_name, values in stats_after.items()
        }
        lost_ring = sum(sum(v.values()) for v in lost_by_cpu.values())
        observation = Observation()
        for side, kind, old, new, n in result["counts"]:
            observation.add(side, "events", kind, n)
            if kind == "state_change":
                observation.add(side, "transitions", transition(old, new), n)
        events_read = sum(n for *_, n in result["counts"]) + sum(result["filtered_user_space"].values()) \
            + result["not_tcp"]
        # a page marked "missed" without a stored count is already in the stats; never add both
        observation.lost = max(lost_ring, result["missed_stored"])
        cpu["startup"] = round(self.ready["cpu_s"], 4)
        # while tracing (the cost that competes with the workload), and the decoding after the stop
        cpu["while_tracing"] = round(result["cpu_s_at_stop"] - self.ready["cpu_s"], 4)
        cpu["after_stop"] = round(cpu["total"] - result["cpu_s_at_stop"], 4)
        observation.details = {
            "instance": self.instance_name,
            "hooks_attached": self.attached,
            "hooks_absent": self.absent,
            "kernel_filters": self.filters,
            "filtered_user_space": result["filtered_user_space"],
            "not_tcp": result["not_tcp"],
            "unknown_event_types": result["unknown_types"],
            "buffer_kib_per_cpu": self.buffer_kib_per_cpu,
            "buffer_bytes": self.buffer_kib_per_cpu * 1024 * len(self.config["cpus"]),
            "page_bytes": self.config["page_size"],
            "poll_ms": self.config["poll_ms"],
            "ring_stats": {"lost_by_cpu": lost_by_cpu, "after": stats_after},
            "lost_ring": lost_ring,
            "missed_pages": result["missed_pages"],
            "missed_stored": result["missed_stored"],
            "events_read": events_read,
            "pages_read": result["pages"],
            "bytes_read": result["bytes"],
            "reader_polls": result["polls"],
            "max_pages_per_poll": result["max_pages_per_poll"],
            "drain_s": result["drain_s"],
            "consumer_cpu_s": cpu,
            # record mode's decode after the stop (and either mode's drain): in the cost
            "deferred_cpu_s": self.deferred.since("reader", cpu["total"]),
            "consumer": self.config["consumer"],
            "decode_after_stop_s": result["decode_after_stop_s"],
            "consumer_ns_per_event": round((cpu["total"] - cpu["startup"]) * 1e9 / events_read, 1)
            if events_read else None,
            "consumer_ns_per_event_while_tracing": round(cpu["while_tracing"] * 1e9 / events_read, 1)
            if events_read else None,
            "attribution": [{"side": s, "kind": k, "pid": pid, "count": n} for s, k, pid, n in result["attribution"]],
            "invisible": {"comm": "ftrace records only the pid (common_pid); comm needs saved_cmdlines"},
        }
        return observation

    @property
    def instance_name(self) -> str | None:
        return self.instance.name if self.instance is not None else None

    def close(self) -> None:
        """Idempotent: stop the reader, disable the events, remove the instance (always)."""
        if self.closed:
            return
        self.closed = True
        kill(self.process)  # its open trace_pipe_raw files would keep the instance busy
        if self.instance is None:
            return
        for path in [self.instance / "tracing_on", *self.enabled]:
            try:
                path.write_text("0")
            except OSError:
                pass  # best effort: rmdir below tears the events down anyway
        remove_instance(self.instance)


def remove_instance(instance: Path) -> None:
    """rmdir an instance (the kernel frees its buffers and event files); EBUSY while a file in it
    is open, so the reader is gone before this runs."""
    try:
        instance.rmdir()
    except FileNotFoundError:
        pass


class TracefsBackend(Backend):
    name = "tracefs"
    description = "the 7 TCP tracepoints via ftrace's own ring buffer (private instance, kernel filter), no BPF"
    hooks = tuple(HOOKS.values())
    params = (
        Param("hooks", str, "all", "tracepoints to enable: all, or short names joined by '+' "
              f"({'+'.join(HOOKS)})", check=check_hooks),
        # 76 bytes per inet_sock_set_state entry (72 + 4 header): 32 MiB per CPU holds ~440k events
        # per CPU, over a second of the churn generator's top rate if the reader got no CPU at all.
        Param("buffer_kib", int, 32768, "ring buffer size per CPU in KiB (buffer_size_kb)",
              minimum=64, maximum=1 << 20),
        Param("poll_ms", float, 10.0, "reader: sleep between drains of every CPU's trace_pipe_raw",
              minimum=0.1, maximum=1000),
        Param("consumer", str, "record", "record: copy pages to tmpfs while tracing, decode after the "
              "stop (trace-cmd record); live: decode every page as it is read", choices=("record", "live")),
        Param("instance", str, "", "instance name under instances/ (empty: tpb-tracefs-<pid>-<random>); "
              "must not exist", check=_check_instance),
    )

    def availability(self, probe: KernelProbe, params: dict[str, Any] | None = None) -> Availability:
        if not probe.available("tracefs"):
            return Availability(False, f"tracefs: {probe['tracefs'].reason}" if "tracefs" in probe.capabilities
                                else "tracefs not probed")
        missing = tuple(tp for tp in self.hooks if not probe.available(f"tracepoint:{tp}"))
        if len(missing) == len(self.hooks):
            return Availability(False, "none of the seven TCP tracepoints exists on this kernel", missing)
        note = f"; absent here: {', '.join(missing)}" if missing else ""
        return Availability(True, f"{len(self.hooks) - len(missing)} of {len(self.hooks)} tracepoints in a "
                            f"private tracefs instance{note}", missing)

    def check_params(self, params: dict[str, Any]) -> None:
        """An explicit instance name that exists already is refused before anything is touched
        (attach refuses it again, atomically, with mkdir's EEXIST)."""
        name = params.get("instance")
        try:
            tracefs = tracefs_path()
            exists = bool(name) and tracefs is not None and (tracefs / "instances" / name).exists()
        except OSError:  # not root: tracefs is 0700; the root check comes next and says so
            return
        if exists:
            raise UsageError(f"tracefs: instance {name!r} is already in use ({tracefs / 'instances' / name} "
                             "exists); choose another -p tracefs.instance=, or leave it empty")

    def attach(self, topology: Topology, params: dict[str, Any]) -> _Session:
        return _Session(topology, params)


assert set(KINDS.values()) <= set(EVENT_KINDS)
