"""Deterministic packet drops and offload settings, made inside a topology's namespaces.

This kernel has no netem; netfilter's statistic match in nth mode drops exactly every Nth packet
that matches a rule, and the rule's own packet counter says how many it dropped. Rules and ethtool
settings are made with `host.command()` (nsenter), so they live in the topology's namespaces and
vanish with them even if the harness is SIGKILLed; they are also removed explicitly on exit, and
the counter is read before the rule goes.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

from netns import Host

from .base import WorkloadError

# The ethtool features that decide how many TCP segments one skb carries on the veth.
OFFLOAD_FEATURES = {
    "tso": "tcp-segmentation-offload",
    "gso": "generic-segmentation-offload",
    "gro": "generic-receive-offload",
}


def _run(host: Host, argv: list[str], what: str) -> str:
    try:
        result = subprocess.run(host.command(argv), capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise WorkloadError(f"{argv[0]} is not installed (make setup installs it)") from None
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise WorkloadError(f"{what} in {host.role}'s namespace failed: {detail}")
    return result.stdout


class DropRule:
    """`with DropRule(host, chain, match, every, tag) as rule:` drops every `every`th matching packet.

    rule.dropped() reads the rule's packet counter (iptables-save -c); on exit the counter is read
    once more (rule.final_dropped) and the rule deleted, whatever happened inside the block.
    """

    def __init__(self, host: Host, chain: str, match: list[str], every: int, tag: str):
        if every < 2:
            raise ValueError("every must be >= 2 (every=1 drops all matching packets)")
        self.host = host
        self.chain = chain
        self.tag = tag
        # --packet every-1: the first drop is the every-th packet, not the first one
        self.spec = [
            *match,
            "-m", "statistic", "--mode", "nth", "--every", str(every), "--packet", str(every - 1),
            "-m", "comment", "--comment", tag,
            "-j", "DROP",
        ]
        self.final_dropped: int | None = None
        self.installed = False

    def __enter__(self) -> "DropRule":
        _run(self.host, ["iptables", "-w", "-A", self.chain, *self.spec], "adding the drop rule")
        self.installed = True
        return self

    def dropped(self) -> int:
        text = _run(self.host, ["iptables-save", "-c", "-t", "filter"], "reading the drop rule's counter")
        for line in text.splitlines():
            if f"--comment {self.tag}" in line and line.startswith("["):
                packets = re.match(r"\[(\d+):(\d+)\]", line)
                if packets:
                    return int(packets.group(1))
        raise WorkloadError(f"drop rule {self.tag} not found in {self.host.role}'s namespace")

    def __exit__(self, *exc: Any) -> None:
        if not self.installed:
            return
        try:
            self.final_dropped = self.dropped()
        finally:
            _run(self.host, ["iptables", "-w", "-D", self.chain, *self.spec], "removing the drop rule")
            self.installed = False

    def describe(self) -> str:
        return f"iptables -A {self.chain} {' '.join(self.spec)}"


def read_offloads(host: Host) -> dict[str, bool]:
    """tso, gso and gro of `host`'s veth as `ethtool -k` shows them (WorkloadError if one is missing)."""
    text = _run(host, ["ethtool", "-k", host.ifname], "ethtool -k")
    features = {}
    for short, long in OFFLOAD_FEATURES.items():
        found = re.search(rf"^{long}: (on|off)", text, re.MULTILINE)
        if found is None:
            raise WorkloadError(f"ethtool -k {host.ifname} does not show {long}")
        features[short] = found.group(1) == "on"
    return features


def set_offloads(host: Host, features: dict[str, bool]) -> None:
    """Turn each of `features` (tso, gso, gro) on or off on `host`'s veth (ethtool -K)."""
    argv = ["ethtool", "-K", host.ifname]
    for short, on in features.items():
        argv += [short, "on" if on else "off"]
    _run(host, argv, " ".join(argv))


class Offloads:
    """`with Offloads(topology.hosts, enabled)`: TSO/GSO/GRO on both veth ends, restored on exit.

    With TSO/GSO on, one skb crosses the veth as one packet carrying many segments (nothing
    segments it on the way), so a dropped packet is many lost segments; off, the veth segments each
    skb before it leaves, so a dropped packet is one segment. TCP itself builds multi-segment skbs
    either way (the kernel forces GSO on TCP sockets), so retransmitted skbs still are not
    segments. `settings` records what
    each end actually had during the trial.
    """

    def __init__(self, hosts: tuple[Host, ...], enabled: bool):
        self.hosts = hosts
        self.enabled = enabled
        self.original: dict[str, dict[str, bool]] = {}
        self.settings: dict[str, dict[str, bool]] = {}

    def __enter__(self) -> "Offloads":
        for host in self.hosts:
            self.original[host.role] = read_offloads(host)
        try:
            if not self.enabled:
                for host in self.hosts:
                    set_offloads(host, {name: False for name in OFFLOAD_FEATURES})
            for host in self.hosts:
                self.settings[host.role] = read_offloads(host)
        except BaseException:
            self._restore()
            raise
        if not self.enabled and any(any(s.values()) for s in self.settings.values()):
            self._restore()
            raise WorkloadError(f"offloads still on after ethtool -K ... off: {self.settings}")
        return self

    def _restore(self) -> None:
        for host in self.hosts:
            if host.role in self.original:
                set_offloads(host, self.original[host.role])

    def __exit__(self, *exc: Any) -> None:
        if not self.enabled:
            self._restore()
