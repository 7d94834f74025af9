"""Network-namespace topologies for tpbench, built with pyroute2.

A topology is two hosts, `client` and `server`, each in its own namespace, joined by one veth pair
addressed in 198.18.0.0/15 (RFC 2544's benchmarking range), loopback up, no default route: traffic
can reach nothing but the other host.
"""

from .topology import (
    CLIENT_ADDRESS,
    NAME_PREFIX,
    SERVER_ADDRESS,
    SUBNET,
    Host,
    Topology,
    find_leftovers,
    remove_leftovers,
)

__all__ = [
    "CLIENT_ADDRESS",
    "NAME_PREFIX",
    "SERVER_ADDRESS",
    "SUBNET",
    "Host",
    "Topology",
    "find_leftovers",
    "remove_leftovers",
]
