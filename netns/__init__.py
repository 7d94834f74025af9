"""Network-namespace topologies for tpbench, built with pyroute2.

A topology is two hosts, `client` and `server`, each in its own namespace, joined by one veth pair
addressed in its own /24 of 198.18.0.0/15 (RFC 2544's benchmarking range: .1 is the client, .2 the
server), loopback up, no default route: traffic can reach nothing but the other host.
"""

from .topology import (
    NAME_PREFIX,
    SUBNET,
    Host,
    Topology,
    find_leftovers,
    pair_addresses,
    remove_leftovers,
)

__all__ = [
    "NAME_PREFIX",
    "SUBNET",
    "Host",
    "Topology",
    "find_leftovers",
    "pair_addresses",
    "remove_leftovers",
]
